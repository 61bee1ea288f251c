"""Deletions no watch reported: after kopf lists a kind again, whatever the engine holds that no longer exists goes.

kopf lists again whenever a watch cannot resume (410 Gone: its resource
version expired, e.g. while the operator was cut off from a restarted API
server) and reports only the objects that exist: an object deleted
meanwhile never gets its DELETED event, and a pod's or binding's deletion
is a revocation. So once the relist is over, whatever we hold that no
longer exists is deleted here. Every kind is checked whichever relisted (a
relist of a kind with no objects left delivers nothing at all),
ServiceAccounts too, whose deletion takes their role away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from podiam_operator._core import world
from podiam_operator._engine import ports
from podiam_operator._engine.tasks import Tasks

logger = logging.getLogger(__name__)

RELIST_QUIET = 1.0  # seconds without relisted objects before checking what the relist did not show
RELIST_RETRY = 5.0

_KIND_NAMES = {"pods": "pod", "bindings": "PodRoleBinding", "serviceaccounts": "ServiceAccount"}


class Deletions(Protocol):
    """Where a vanished object goes: the engine, as if its watch had reported the deletion."""

    def pod_event(self, event_type: str | None, body: dict[str, Any]) -> None: ...

    def proxy_event(self, event_type: str | None, body: dict[str, Any], node_hint: str | None = None) -> None: ...

    def service_account_event(self, event_type: str | None, body: dict[str, Any]) -> None: ...

    def binding_event(self, event_type: str | None, body: dict[str, Any]) -> None: ...


class Relists:
    def __init__(self, model: world.World, lister: ports.UidLister, tasks: Tasks, deletions: Deletions) -> None:
        self._world = model
        self._lister = lister
        self._tasks = tasks
        self._deletions = deletions
        self._relisted_at = 0.0  # when kopf last delivered an object of a relist
        self._reconciling = False

    def relisted(self) -> None:
        """kopf delivered an object of a relist: check every kind once the relist is over."""
        self._relisted_at = time.monotonic()
        if not self._reconciling:
            self._reconciling = True
            self._tasks.spawn(self._reconcile(), "reconcile-after-relist")

    async def _reconcile(self) -> None:
        try:
            while (quiet := self._relisted_at + RELIST_QUIET - time.monotonic()) > 0:
                await asyncio.sleep(quiet)
            # ServiceAccounts only when they can hold roles (--irsa-service-accounts): listing them costs.
            for kind in ("pods", "bindings", *(("serviceaccounts",) if self._world.config.irsa else ())):
                while True:
                    try:
                        await self._drop_vanished(kind)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as error:  # the API server may be away again: keep trying
                        logger.warning("checking %s after a relist failed (%s: %s); retrying", kind, type(error).__name__, error)
                    await asyncio.sleep(RELIST_RETRY)
        finally:
            self._reconciling = False

    def _held(self, kind: str) -> dict[tuple[str, str], str]:
        if kind == "pods":
            return {key: pod.uid for key, pod in self._world.pods.items()}
        if kind == "serviceaccounts":
            return {key: account.uid for key, account in self._world.service_accounts.items()}
        return {key: binding.uid for key, binding in self._world.bindings.items()}

    async def _drop_vanished(self, kind: str) -> None:
        listed = await self._lister.list_uids(kind)
        suspects = [(key, uid) for key, uid in self._held(kind).items() if listed.get(key) != uid]
        for (namespace, name), uid in suspects:
            # Seen by the watch after the list was taken, perhaps: ask for it by name.
            if await self._lister.current_uid(kind, namespace, name) == uid:
                continue
            if self._held(kind).get((namespace, name)) != uid:
                continue  # the watch caught up meanwhile
            logger.warning("%s %s/%s (uid %s) was deleted while our watch was broken: revoking now",
                           _KIND_NAMES[kind], namespace, name, uid)
            if kind == "pods":
                pod = self._world.pods[(namespace, name)]
                body = {"metadata": {"namespace": namespace, "name": name, "uid": uid}, "spec": {"nodeName": pod.node}}
                self._deletions.pod_event("DELETED", body)
                proxy = self._world.proxies.get(pod.node or "")
                if proxy is not None and proxy.pod_uid == uid:
                    self._deletions.proxy_event("DELETED", body)
            elif kind == "serviceaccounts":
                self._deletions.service_account_event("DELETED", {"metadata": {"namespace": namespace, "name": name, "uid": uid}})
            else:
                self._deletions.binding_event("DELETED", {"metadata": {"namespace": namespace, "name": name, "uid": uid}})
