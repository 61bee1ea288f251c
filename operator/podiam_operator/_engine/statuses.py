"""PodRoleBindings' status: written in the background when it changes, a Warning Event for a failed phase."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable
from typing import Any

from kubernetes_asyncio.client.rest import ApiException

from metadata_proxy import wire
from podiam_operator import _metrics
from podiam_operator._core import decide, facts, world
from podiam_operator._engine import ports
from podiam_operator._engine.events import Events, ref
from podiam_operator._engine import tasks
from podiam_operator._kits import clock as clocks
from podiam_operator._kits import sts

logger = logging.getLogger(__name__)


class BindingStatuses:
    def __init__(self, model: world.World, cache: sts.CredentialCache, writer: ports.StatusWriter, clock: clocks.Clock,
                 events: Events) -> None:
        self._world = model
        self._cache = cache
        self._writer = writer
        self._clock = clock
        self._events = events
        # 50 ms after a change: a burst of changes to one binding makes one write.
        self._work: tasks.KeyedWork[world.BindingKey] = tasks.KeyedWork(self._write, tasks.WRITE_CONCURRENCY, delay=0.05)
        self._written: dict[world.BindingKey, dict[str, Any]] = {}
        self._conditions: dict[world.BindingKey, dict[str, Any]] = {}
        self._phases: dict[world.BindingKey, str] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        for phase in decide.PHASES:
            _metrics.BINDINGS.labels(phase).set(0)

    def mark(self, keys: Iterable[world.BindingKey], *, background: bool = False) -> None:
        """These bindings' status may have changed: compute it again, write it if it did (``background``: once no
        other binding waits)."""
        self._work.mark(keys, background=background)

    def hold_background(self) -> None:
        """Background marks wait (a new leader's first snapshots go first) until :meth:`release_background`."""
        self._work.hold_background()

    def release_background(self) -> None:
        self._work.release_background()

    def forget(self, key: world.BindingKey) -> None:
        """The binding is gone."""
        self._written.pop(key, None)
        self._conditions.pop(key, None)
        phase = self._phases.pop(key, None)
        if phase is not None:
            self._count(phase, -1)

    def _status_of(self, key: world.BindingKey) -> tuple[decide.BindingStatus, facts.BindingFacts] | None:
        binding = self._world.bindings.get(key)
        if binding is None:
            return None
        decisions = self._world.binding_decisions(key)
        if binding.pod_owned:
            # A pod-owned binding speaks for its owner pod only.
            decisions = [(p, d) for p, d in decisions if p.uid == binding.owner_pod_uid]
        states = {d.grant.key: self._cache.state(d.grant.key) for _, d in decisions if d.grant is not None}
        contested = {p.key: why for p, _ in decisions if (why := self._world.ip_conflict(p.key)) is not None}
        return decide.binding_status(self._world.evals.get(key), decisions, states, contested), binding

    async def run(self) -> None:
        await self._work.run()

    async def _write(self, key: world.BindingKey) -> None:
        computed = self._status_of(key)
        if computed is None:
            return
        status, binding = computed
        ready = "True" if status.phase == "Bound" else "False"
        previous = self._conditions.get(key)
        transition = previous["lastTransitionTime"] if previous and previous["status"] == ready else wire.rfc3339(self._clock.now())
        condition = {
            "type": "Ready", "status": ready, "reason": status.reason, "message": status.message,
            "lastTransitionTime": transition, "observedGeneration": binding.generation,
        }
        body: dict[str, Any] = {
            "phase": status.phase,
            "roleArn": status.role_arn,
            "pods": status.pods,
            "expiration": status.expiration,
            "message": status.message,
            "observedGeneration": binding.generation,
            "conditions": [condition],
        }
        comparable = {k: v for k, v in body.items() if k != "conditions"} | {"reason": status.reason}
        if self._written.get(key) == comparable:
            return
        try:
            await self._writer.patch_binding_status(binding.namespace, binding.name, body)
        except ApiException as error:
            if error.status != 404:
                logger.warning("status of binding %s/%s not written: HTTP %s", *key, error.status)
                self.mark([key])
                await asyncio.sleep(1.0)
            return
        old_phase = self._phases.get(key)
        self._written[key] = comparable
        self._conditions[key] = condition
        self._phases[key] = status.phase
        if old_phase != status.phase:
            if old_phase is not None:
                self._count(old_phase, -1)
            self._count(status.phase, +1)
        on = ref(facts.API_VERSION, facts.KIND, binding.namespace, binding.name, binding.uid)
        if status.phase in decide.FAILED:
            self._events.post(on, "Warning", status.reason, status.message)
        elif status.phase == "Bound" and old_phase != "Bound":
            # No Event for success (5,000 pods would mean 5,000 Events); a
            # failure after a recovery is news again.
            self._events.forget(binding.uid)

    def _count(self, phase: str, change: int) -> None:
        # Counted as phases change: recounting every binding's phase at each write was quadratic.
        self._counts[phase] += change
        _metrics.BINDINGS.labels(phase).set(self._counts[phase])
