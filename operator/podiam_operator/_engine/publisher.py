"""The active replica's own state, in the ConfigMap ``kubectl podiam`` reads (format: :mod:`_core.published`).

Written when it changes (checked every ``interval``) and at least every
``HEARTBEAT_SECONDS``, by the active replica only: a standby's picture is
frozen. Nothing secret: settings, ARNs, node names, counts, expiry times and
STS error messages, all of which the operator's log and binding statuses
already carry for anyone who may read them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from metadata_proxy import wire
from podiam_operator._core import published
from podiam_operator._engine.engine import Engine
from podiam_operator._kits import kube as kubes

logger = logging.getLogger(__name__)

TlsStatus = Callable[[], tuple[bool, str]]


def _time(moment: float | datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, float):
        moment = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    return wire.rfc3339(moment)


def certificate_expiry(path: Path) -> str | None:
    """The earliest notAfter of the PEM certificates in ``path`` (None: unreadable)."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return None
    return _time(min(c.not_valid_after_utc for c in certificates)) if certificates else None


MAX_DOCUMENT = 900 * 1024  # bytes; a ConfigMap's data holds at most 1 MiB
WRITE_RATE = 100_000.0  # bytes a second, at most, on average


class Publisher:
    def __init__(self, engine: Engine, kube: kubes.Kube, *, namespace: str, name: str, identity: str,
                 decisions: dict[str, Any], node_taint: str, tls_status: TlsStatus, client_cert: Path, ca_file: Path,
                 interval: float = 2.0) -> None:
        self.engine = engine
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.decisions = decisions
        self.node_taint = node_taint
        self.tls_status = tls_status
        self.client_cert = client_cert
        self.ca_file = ca_file
        self.interval = interval
        self._written: dict[str, Any] | None = None
        self._pause = interval
        self._written_at = 0.0
        self._failed: str | None = None

    def document(self) -> dict[str, Any]:
        """What the ConfigMap says, without its time stamp."""
        engine = self.engine
        world = engine.world
        proxies: dict[str, Any] = {}
        states = engine.proxy_states()
        tainted = engine.tainted
        for node in sorted(set(states) | set(world.proxies)):
            state = states.get(node)
            proxy = world.proxies.get(node)
            # Only what is not the default: with 5,000 nodes every byte per node counts (a ConfigMap holds 1 MiB).
            entry: dict[str, Any] = {"synced": bool(state and state.synced)}
            if proxy is not None:
                entry["pod"] = proxy.pod_name
            if state is not None:
                if state.entries + state.token_only:
                    entry["pods"] = state.entries + state.token_only
                if state.roles:
                    entry["roles"] = state.roles
                if state.last_push is not None:
                    entry["lastPush"] = _time(state.last_push)
                if state.last_error is not None:
                    entry["lastError"] = state.last_error
            if node in tainted:
                entry["tainted"] = True
            proxies[node] = entry
        roles = []
        for key in world.used_keys():
            grant = world.grants.get(key)
            if grant is not None:
                roles.append((grant.role.arn, engine.cache.state(key), len(world.key_users.get(key, ()))))
        ok, message = self.tls_status()
        return {
            "version": published.VERSION,
            "replica": self.identity,
            "pod": os.environ.get("POD_NAME"),
            "phase": engine.phase,
            "heartbeatSeconds": published.HEARTBEAT_SECONDS,
            "aws": {
                "callerArn": engine.caller_arn,
                "baseArn": world.base.prefix if world.base else None,
                "identityError": engine.identity_error,
            },
            "decisions": self.decisions,
            "nodeTaint": self.node_taint,
            "tls": {"ok": ok, "message": message, "clientCertificateExpires": certificate_expiry(self.client_cert),
                    "caExpires": certificate_expiry(self.ca_file)},
            "proxies": proxies,
            "roles": published.role_summary(roles),
        }

    async def publish_once(self) -> None:
        document = self.document()
        now = time.monotonic()
        if document == self._written and now - self._written_at < published.HEARTBEAT_SECONDS:
            return
        stamped = {**document, "updated": _time(datetime.datetime.now(datetime.timezone.utc))}
        encoded = json.dumps(stamped, sort_keys=True, separators=(",", ":"))
        if len(encoded) > MAX_DOCUMENT:
            # Too many nodes to list each: those that need a look stay (not synced, an error, tainted).
            listed = {node: entry for node, entry in document["proxies"].items() if set(entry) - {"synced", "pod", "pods", "roles", "lastPush"}
                      or not entry["synced"]}
            stamped |= {"proxies": listed, "proxiesOmitted": len(document["proxies"]) - len(listed)}
            encoded = json.dumps(stamped, sort_keys=True, separators=(",", ":"))
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace,
                                         labels={"app.kubernetes.io/managed-by": kubes.COMPONENT}),
            data={published.KEY: encoded},
        )
        try:
            try:
                await self.kube.core.replace_namespaced_config_map(self.name, self.namespace, body)
            except ApiException as error:
                if error.status != 404:
                    raise
                await self.kube.core.create_namespaced_config_map(self.namespace, body)
        except ApiException as error:
            problem = f"HTTP {error.status} {error.reason}"
            if problem != self._failed:
                logger.warning("status ConfigMap %s/%s not written (kubectl podiam reads it): %s", self.namespace, self.name, problem)
            self._failed = problem
            return
        self._failed = None
        self._written, self._written_at = document, now
        # A large document is written less often: 100 kB a second at most, whatever the cluster's size.
        self._pause = max(self.interval, len(encoded) / WRITE_RATE)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._pause)
            if not self.engine.started:
                continue  # a standby (or a replica still starting) says nothing
            try:
                await self.publish_once()
            except Exception:  # never the operator's trouble: the next round tries again
                logger.exception("status ConfigMap %s/%s not written", self.namespace, self.name)
