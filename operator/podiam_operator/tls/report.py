"""Where TLS problems show: the log, a Kubernetes Event, and the readiness status.

Events go on the operator's own Pod when its name is known (``kubectl
describe pod`` of an unready operator shows why), else on the operator's TLS
Secret (``kubectl describe secret``). Each distinct problem is posted once,
not at every check; recovery posts a Normal ``TLSReady`` Event.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client import exceptions as kube_exceptions

from podiam_operator.tls import checks

Logger = logging.Logger | logging.LoggerAdapter[Any]
_COMPONENT = "podiam-operator"
_MAX_MESSAGE = 1024
# "(3 minutes ago)", "(in 2 days)": a persisting problem's text changes as
# time passes, but it is the same problem: compare messages without them.
_RELATIVE = re.compile(r"\((?:in )?\d+ (?:seconds|minutes|hours|days)(?: ago)?\)")


def _key(reason: str, message: str) -> tuple[str, str]:
    return reason, _RELATIVE.sub("", message)


@dataclasses.dataclass(frozen=True)
class Status:
    """``ok`` is what ``/readyz`` needs; ``message`` says why not (or what is in use)."""

    ok: bool
    message: str


class EventSink:
    def __init__(self, api: client.ApiClient, namespace: str, kind: str, name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.kind = kind
        self.name = name
        self._uid: str | None = None

    async def _involved(self) -> client.V1ObjectReference:
        if self._uid is None:
            # kubectl describe finds Events by the object's uid as well.
            try:
                read = self.core.read_namespaced_pod if self.kind == "Pod" else self.core.read_namespaced_secret
                self._uid = (await read(self.name, self.namespace)).metadata.uid or ""
            except kube_exceptions.ApiException:
                pass
        return client.V1ObjectReference(api_version="v1", kind=self.kind, name=self.name, namespace=self.namespace, uid=self._uid or None)

    async def post(self, type_: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        body = client.CoreV1Event(
            api_version="v1",
            kind="Event",
            metadata=client.V1ObjectMeta(generate_name=f"{self.name}.", namespace=self.namespace),
            involved_object=await self._involved(),
            type=type_,
            reason=reason,
            message=message[:_MAX_MESSAGE],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=_COMPONENT),
            reporting_component=_COMPONENT,
        )
        await self.core.create_namespaced_event(self.namespace, body)


class Reporter:
    def __init__(self, logger: Logger, events: EventSink | None) -> None:
        self.logger = logger
        self.events = events
        self.status = Status(ok=False, message="TLS material not prepared yet")
        self._posted: set[tuple[str, str]] = set()

    async def _event(self, type_: str, reason: str, message: str, *, once: bool) -> None:
        if self.events is None or (once and _key(reason, message) in self._posted):
            return
        try:
            await self.events.post(type_, reason, message)
        except Exception as error:  # an Event is a courtesy: its failure must not stop TLS work
            self.logger.warning("could not post Event %s: %s", reason, error)
            return
        if once:
            self._posted.add(_key(reason, message))

    async def problem(self, problem: checks.TlsProblem) -> None:
        """Unready: pushes cannot work until this is fixed."""
        if self.status.ok or _key("", self.status.message) != _key("", problem.message):
            self.logger.error("TLS: %s", problem.message)
        self.status = Status(ok=False, message=problem.message)
        await self._event("Warning", problem.reason, problem.message, once=True)

    async def warning(self, reason: str, message: str) -> None:
        """Worth knowing, still working (e.g. a certificate close to expiry)."""
        if _key(reason, message) not in self._posted:
            self.logger.warning("TLS: %s", message)
        await self._event("Warning", reason, message, once=True)

    async def changed(self, reason: str, message: str) -> None:
        """Something was issued or rotated."""
        self.logger.info("TLS: %s", message)
        await self._event("Normal", reason, message, once=False)

    async def ready(self, message: str) -> None:
        if not self.status.ok:
            self.logger.info("TLS: %s", message)
            if self._posted:
                await self._event("Normal", "TLSReady", message, once=False)
            # A problem that comes back later is news again.
            self._posted.clear()
        self.status = Status(ok=True, message=message)
