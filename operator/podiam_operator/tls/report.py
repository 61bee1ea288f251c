"""Where TLS problems show: the log, a Kubernetes Event, and the readiness status.

Events go on the operator's own Pod when its name is known (``kubectl
describe pod`` of an unready operator shows why), else on the operator's TLS
Secret (``kubectl describe secret``). Each distinct problem is posted once,
not at every check; recovery posts a Normal ``TLSReady`` Event.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Protocol

from kubernetes_asyncio.client import exceptions as kube_exceptions

from podiam_operator._kits import kube as kubes
from podiam_operator.tls import checks

Logger = logging.Logger | logging.LoggerAdapter[Any]
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


class Events:
    """TLS Events, posted by the operator's one Event poster (``Kube.event``) on its Pod, or else its TLS Secret."""

    def __init__(self, kube: kubes.Kube, namespace: str, kind: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.kind = kind
        self.name = name
        self._uid: str | None = None

    async def _involved(self) -> dict[str, str]:
        if self._uid is None:
            # kubectl describe finds Events by the object's uid as well.
            try:
                read = self.kube.core.read_namespaced_pod if self.kind == "Pod" else self.kube.core.read_namespaced_secret
                self._uid = (await read(self.name, self.namespace)).metadata.uid or ""
            except kube_exceptions.ApiException:
                pass
        return {"apiVersion": "v1", "kind": self.kind, "name": self.name, "namespace": self.namespace, "uid": self._uid or ""}

    async def post(self, type_: str, reason: str, message: str) -> bool:
        return await self.kube.event(await self._involved(), type_, reason, message)


class Poster(Protocol):
    async def post(self, type_: str, reason: str, message: str) -> bool:
        """True once posted; a failure is logged by the poster."""
        ...


class Reporter:
    def __init__(self, logger: Logger, events: Poster | None) -> None:
        self.logger = logger
        self.events = events
        self.status = Status(ok=False, message="TLS material not prepared yet")
        self._posted: set[tuple[str, str]] = set()

    async def _event(self, type_: str, reason: str, message: str, *, once: bool) -> None:
        if self.events is None or (once and _key(reason, message) in self._posted):
            return
        try:
            posted = await self.events.post(type_, reason, message)
        except Exception as error:  # an Event is a courtesy: its failure must not stop TLS work
            self.logger.warning("could not post Event %s: %s", reason, error)
            return
        if once and posted:
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
