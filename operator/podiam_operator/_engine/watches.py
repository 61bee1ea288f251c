"""The operator's own watches: each kind the engine decides from, followed from the start-up listing on.

kopf watches nothing: its first listing of every pod went through its whole
per-object machinery (half the operator's CPU in a restart at 50,000 pods,
bench.scale), and a standby paused by peering did not watch at all, so a
takeover listed everything twice. Here each kind is watched from the
resourceVersion of the start-up listing, on every replica: a standby's
picture stays current and a takeover lists nothing.

When a watch cannot resume (410 Gone: its version expired, e.g. while the
API server was away), its kind is listed again and the watch resumes from
that listing. A listing is a consistent snapshot, so whatever the engine
holds of that kind and the listing lacks was deleted meanwhile, with no
DELETED event: it goes now (a pod's or a binding's deletion is a
revocation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from podiam_operator._core import world
from podiam_operator._kits import kube as kubes
from podiam_operator._kits import retries

logger = logging.getLogger(__name__)


_KIND_NAMES = {"pods": "pod", "bindings": "PodRoleBinding", "serviceaccounts": "ServiceAccount",
               "namespaces": "namespace", "nodes": "node"}


class Source(Protocol):
    """The API server's lists and watches (raw JSON), as :class:`podiam_operator._kits.kube.Kube` makes them."""

    def list_all(self, kind: str, versions: dict[str, str] | None = None) -> AsyncIterator[dict[str, Any]]: ...

    def watch(self, kind: str, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...


class Sink(Protocol):
    """Where changes go: the engine (through the assembly, which knows which pods are proxies)."""

    def changed(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None: ...


def held(model: world.World, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """What the engine holds of ``kind``, as the body of the DELETED event each would get."""
    if kind == "pods":
        return {key: {"metadata": {"namespace": key[0], "name": key[1], "uid": pod.uid}, "spec": {"nodeName": pod.node}}
                for key, pod in model.pods.items()}
    if kind == "bindings":
        return {key: {"metadata": {"namespace": key[0], "name": key[1], "uid": binding.uid}}
                for key, binding in model.bindings.items()}
    if kind == "serviceaccounts":
        return {key: {"metadata": {"namespace": key[0], "name": key[1], "uid": account.uid}}
                for key, account in model.service_accounts.items()}
    if kind == "namespaces":
        return {("", name): {"metadata": {"name": name}} for name in model.namespaces}
    return {}  # nodes: only their taints are held, and a node's deletion needs nothing taken away


class Watches:
    """One task per kind: watch from the listing's version; list again when the watch cannot resume."""

    def __init__(self, source: Source, sink: Sink, model: world.World, versions: dict[str, str]) -> None:
        self._source = source
        self._sink = sink
        self._world = model
        self._versions = dict(versions)  # kind -> the resourceVersion reached ("": list first)

    @property
    def kinds(self) -> list[str]:
        return list(self._versions)

    async def follow(self, kind: str) -> None:
        """Forever: ``kind``'s changes to the sink, in order."""
        retry = retries.Retry(retries.API_LOW, retries.API_HIGH)
        while True:
            try:
                if not self._versions[kind]:
                    await self._relist(kind)
                began = time.monotonic()
                async for event_type, body in self._source.watch(kind, self._versions[kind]):
                    if event_type != "BOOKMARK":
                        self._sink.changed(kind, event_type, body)
                    version = (body.get("metadata") or {}).get("resourceVersion")
                    if version:
                        self._versions[kind] = str(version)
                if retry.succeeded():
                    logger.info("watching %s again", kind)
                if time.monotonic() - began < retries.API_LOW:  # ended at once: never a busy loop
                    await asyncio.sleep(retries.API_LOW)
            except asyncio.CancelledError:
                raise
            except kubes.Gone as error:
                logger.warning("the watch of %s cannot resume (%s): listing them again", kind, error)
                self._versions[kind] = ""
            except Exception as error:
                if retry.failed(f"{type(error).__name__}: {error}"):  # said once per kind and cause
                    logger.warning("watching %s failed (%s); retrying", kind, retry.cause)
                await retry.pause()

    async def _relist(self, kind: str) -> None:
        """The listing's objects as changes, then whatever it lacks as deleted (no watch reported it)."""
        listed: set[tuple[str, str]] = set()
        versions: dict[str, str] = {}
        async for body in self._source.list_all(kind, versions):
            meta = body.get("metadata") or {}
            listed.add((str(meta.get("namespace", "")), str(meta.get("name", ""))))
            self._sink.changed(kind, None, body)
        for key, body in held(self._world, kind).items():
            if key not in listed:
                logger.warning("%s %s (uid %s) was deleted while the watch was broken: revoking now", _KIND_NAMES[kind],
                               "/".join(part for part in key if part), body["metadata"].get("uid", "-"))
                self._sink.changed(kind, "DELETED", body)
        self._versions[kind] = versions.get(kind, "")
        logger.info("%s listed again: %d, watching from version %s", kind, len(listed), self._versions[kind] or "-")
