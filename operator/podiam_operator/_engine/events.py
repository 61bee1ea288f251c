"""Events, each posted once: the same reason and message on the same object are not posted again."""

from __future__ import annotations

from collections.abc import Iterable

from podiam_operator._core import decide, facts, reasons, world
from podiam_operator._core.reasons import Reason
from podiam_operator._engine import ports
from podiam_operator._engine.tasks import Tasks


def ref(api_version: str, kind: str, namespace: str, name: str, uid: str) -> dict[str, str]:
    return {"apiVersion": api_version, "kind": kind, "namespace": namespace, "name": name, "uid": uid}


def pod_ref(pod: facts.PodFacts) -> dict[str, str]:
    return ref("v1", "Pod", pod.namespace, pod.name, pod.uid)


class Events:
    def __init__(self, poster: ports.EventPoster, tasks: Tasks, model: world.World) -> None:
        self._poster = poster
        self._tasks = tasks
        self._world = model
        self._emitted: dict[str, dict[str, str]] = {}  # object uid -> reason -> message, to post each Event once

    def post(self, on: dict[str, str], kind: str, reason: str, message: str) -> None:
        posted = self._emitted.setdefault(on["uid"], {})
        if posted.get(reason) == message:
            return
        posted[reason] = message
        self._tasks.spawn(self._poster.event(on, kind, reason, message), "event")

    def forget(self, uid: str, only: Iterable[str] | None = None) -> None:
        """What was posted on the object (every reason, or ``only`` these) is news again if it happens again."""
        posted = self._emitted.get(uid)
        if posted is None:
            return
        if only is not None:
            for reason in only:
                posted.pop(reason, None)
        if only is None or not posted:
            del self._emitted[uid]

    def pod_decision(self, key: world.PodKey, decision: decide.PodDecision) -> None:
        """What a pod's decision means for its Events (and for its ServiceAccount's, when that named the role)."""
        pod = self._world.pods.get(key)
        if pod is None:
            return
        on = pod_ref(pod)
        if decision.outcome in ("denied", "conflict", "error"):
            self.post(on, "Warning", decision.reason, decision.message)
            account = self._world.service_accounts.get((pod.namespace, pod.service_account))
            if decision.source == "serviceaccount" and account is not None:
                # Where whoever annotated the ServiceAccount looks: kubectl describe serviceaccount.
                self.post(ref("v1", "ServiceAccount", account.namespace, account.name, account.uid), "Warning",
                          decision.reason, decision.message)
        elif decision.outcome == "granted":
            # A later failure of the same kind is news again.
            self.forget(pod.uid, only=reasons.POD_REFUSALS)
            conflict = self._world.ip_conflict(key)
            if conflict is not None:
                self.post(on, "Warning", Reason.IP_CONFLICT, conflict)
            else:
                self.forget(pod.uid, only=[Reason.IP_CONFLICT])
            ignored = decide.session_name_ignored(pod, self._world.config)
            if ignored is not None:
                self.post(on, "Normal", Reason.SESSION_NAME_IGNORED, ignored)
            token_only = decide.token_only(pod, self._world.config)
            if token_only is not None:
                self.post(on, "Normal", Reason.CONTAINER_CREDENTIALS_ONLY, token_only)
