"""The PodRoleBindings the operator makes for annotated pods: created, fixed, replaced, deleted with the annotation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from kubernetes_asyncio.client.rest import ApiException

from podiam_operator._core import world
from podiam_operator._core.reasons import Reason
from podiam_operator._engine import ports
from podiam_operator._engine.events import Events, pod_ref
from podiam_operator._engine import tasks

logger = logging.getLogger(__name__)


class OwnedBindings:
    def __init__(self, model: world.World, writer: ports.OwnedBindingWriter, events: Events) -> None:
        self._world = model
        self._writer = writer
        self._events = events
        self._work: tasks.KeyedWork[world.PodKey] = tasks.KeyedWork(self._sync_or_retry, tasks.WRITE_CONCURRENCY)
        self._created: dict[world.PodKey, str] = {}  # created, not seen back yet: pod uid
        self._refused: dict[world.PodKey, tuple[str, str | None, str | None]] = {}  # 422: (pod uid, role, external id)

    def mark(self, keys: Iterable[world.PodKey]) -> None:
        """These pods' bindings may need a change."""
        self._work.mark(keys)

    def binding_seen(self, key: world.PodKey) -> None:
        """A pod-owned binding came back from the API server (created by us, or still there)."""
        self._created.pop(key, None)

    def pod_deleted(self, key: world.PodKey) -> None:
        self._refused.pop(key, None)

    async def run(self) -> None:
        await self._work.run()

    async def _sync_or_retry(self, key: world.PodKey) -> None:
        try:
            await self._sync(key)
        except ApiException as error:
            logger.warning("pod-owned binding %s/%s: HTTP %s %s; retrying", *key, error.status, error.reason)
            await asyncio.sleep(1.0)
            self.mark([key])

    async def _sync(self, key: world.PodKey) -> None:
        pod = self._world.pods.get(key)
        binding = self._world.bindings.get(key)
        if pod is None:
            return  # the garbage collector deletes bindings of deleted pods
        owned = self._world.owned_binding_for(pod)
        if pod.role is None:
            if owned is not None:
                logger.info("pod %s/%s lost its role annotation: deleting its binding", *key)
                await self._writer.delete_binding(pod.namespace, pod.name, owned.uid)
            return
        if binding is not None and owned is None:
            if binding.pod_owned:  # owned by an earlier pod of that name: replace it
                await self._writer.delete_binding(pod.namespace, pod.name, binding.uid)
            else:
                self._events.post(pod_ref(pod), "Warning", Reason.BINDING_NAME_TAKEN,
                                  f"a PodRoleBinding named {pod.name} already exists and is not this pod's; "
                                  "the pod's role annotation still applies, its status shows on the pod's Events only")
            return
        # A role the operator refuses (a "..", another account...) still gets its binding, whose status says why;
        # only what the CRD's own validation refuses (HTTP 422) stays on the pod's Events.
        wanted = (pod.uid, pod.role, pod.external_id)
        if self._refused.get(key) == wanted:
            return  # retrying cannot help (and would spin): the annotations must change
        try:
            if owned is None:
                if self._created.get(key) == pod.uid:
                    return
                try:
                    await self._writer.create_owned_binding(pod)
                except ApiException as error:
                    if error.status != 409:
                        raise
                self._created[key] = pod.uid
            elif owned.role != pod.role or owned.external_id != pod.external_id:
                await self._writer.patch_binding_spec(pod.namespace, pod.name, {"role": pod.role, "externalId": pod.external_id})
        except ApiException as error:
            if error.status != 422:
                raise
            self._refused[key] = wanted
            logger.warning("pod %s/%s: its PodRoleBinding was refused by the API server: %s", *key, error.reason)
