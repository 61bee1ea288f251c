"""The operator's own HTTP listener on ``--metrics-port``: ``/metrics`` and ``/readyz``.

kopf serves ``/healthz`` (liveness) on ``--liveness-port``; readiness is ours,
because only the operator knows what "ready" means here:

- TLS is usable (``Tls.status()``): otherwise no push can succeed, and a
  rolling update should stop at this replica rather than replace a working one;
- the replica has its picture of the cluster and pushes (``active``), or it is a
  **standby**: a live peer with a higher priority is active, and this replica
  keeps its picture current, ready to take over. A standby is ready, so that a rolling update of
  the Deployment proceeds (the new replica stands by, the old one is removed,
  the new one takes over); the body says which role it has.

Not ready (HTTP 503) while starting (TLS set-up, API connection, the
initial listing, retried while refused, the operator's own AWS identity, the
first credential fetches), when TLS is broken, or while the active replica's GetCallerIdentity
fails (retried with backoff; never a liveness failure: kopf's /healthz answers
as soon as the start-up handler is done, and it needs no AWS).

Anything on the pod network can reach this port, so the answer is a status
word only (``ready: active``, ``not ready: TLS``...): no counts, node
names, certificate subjects or ARNs. What is wrong or in use, in full, goes
to the operator's log whenever it changes (``kubectl logs`` needs RBAC);
trusting "local" callers instead would trust every sidecar or proxy that
forwards from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Literal

import prometheus_client
from aiohttp import web

from podiam_operator._engine import Engine
from podiam_operator.tls import report

logger = logging.getLogger(__name__)

Role = Literal["starting", "standby", "active"]
PEERS_CACHE_SECONDS = 2.0  # probes and curl loops must not turn into API calls each


@dataclasses.dataclass(frozen=True)
class Readiness:
    ready: bool
    role: Role
    text: str  # the details: for the log only
    problem: Literal["", "starting", "TLS", "AWS identity unknown"] = ""

    @property
    def summary(self) -> str:
        """What ``/readyz`` answers: a status word, nothing that tells a stranger about the cluster."""
        return f"ready: {self.role}" if self.ready else f"not ready: {self.problem}"


def _tls_not_built() -> report.Status:
    return report.Status(ok=False, message="TLS not prepared yet")


class Probe:
    """What ``/readyz`` reports; the start-up handler updates ``stage`` and sets ``engine``."""

    def __init__(self, tls_status: Callable[[], report.Status] | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        # None until the start-up handler has built the operator's TLS (it serves /readyz before).
        self.tls_status = tls_status or _tls_not_built
        self.clock = clock
        self.stage = "starting"
        self.engine: Engine | None = None
        self._peers: tuple[float, list[str] | str] | None = None  # (when, higher peers or the error)

    async def _higher_peers(self) -> list[str] | str:
        engine = self.engine
        assert engine is not None and engine.leadership is not None
        now = self.clock()
        if self._peers is None or now - self._peers[0] > PEERS_CACHE_SECONDS:
            try:
                found: list[str] | str = sorted(await engine.leadership.higher_peers())
            except Exception as error:  # the API may be away: say so, do not fail the probe's handler
                found = f"cannot read the peering object: {error}"
            self._peers = (now, found)
        return self._peers[1]

    async def _role(self) -> tuple[Role, str]:
        engine = self.engine
        if engine is None:
            return "starting", f"starting: {self.stage}"
        if engine.started:
            known = [s for s in engine.proxy_states().values() if s.known]
            synced = [s for s in known if s.synced]
            failing = sorted(s.node for s in known if s.last_error is not None)
            text = f"active: {len(known)} proxies known, {len(synced)} in sync"
            if failing:
                text += f"; pushes failing to {', '.join(failing[:5])}{' ...' if len(failing) > 5 else ''} (see the log)"
            return "active", text
        if engine.phase == "listing":
            return "starting", f"starting: {self.stage}"
        if engine.phase == "identity":
            return "starting", ("starting: pushing this operator's own pods' entries and asking STS who it is "
                                f"({engine.identity_error or 'GetCallerIdentity in flight'})")
        if engine.phase == "warming-up":
            return "starting", "starting: fetching the credentials in use before the first push"
        if engine.leadership is not None:
            peers = await self._higher_peers()
            if isinstance(peers, list) and peers:
                return "standby", f"standby: active replica {', '.join(peers)}; this one takes over if it stops"
            if isinstance(peers, str):
                return "starting", f"starting: {peers}"
        return "starting", "starting: waiting for leadership"

    async def check(self) -> Readiness:
        status = self.tls_status()
        role, text = await self._role()
        if not status.ok:
            return Readiness(False, role, f"not ready: TLS: {status.message}\n{text}", "TLS")
        if role == "starting":
            return Readiness(False, role, f"not ready: {text}\nTLS: {status.message}", "starting")
        engine = self.engine
        if role == "active" and engine is not None:
            if engine.identity_error is not None:
                # Active and pushing (revocations still go out), but STS does not know us.
                return Readiness(False, role, f"not ready: the operator's AWS identity is unknown: {engine.identity_error}\n"
                                              f"{text}\nTLS: {status.message}", "AWS identity unknown")
            text += f"\nAWS identity: {engine.caller_arn or 'asking STS (GetCallerIdentity)'}"
        return Readiness(True, role, f"ready: {text}\nTLS: {status.message}")


PROBE = web.AppKey("probe", Probe)
LAST_LOGGED = web.AppKey("last_logged", list[str])


async def readyz(request: web.Request) -> web.Response:
    readiness = await request.app[PROBE].check()
    last = request.app[LAST_LOGGED]
    if last != [readiness.text]:
        last[:] = [readiness.text]
        logger.log(logging.INFO if readiness.ready else logging.WARNING, "readiness: %s", readiness.text.replace("\n", "; "))
    return web.Response(status=200 if readiness.ready else 503, text=readiness.summary + "\n",
                        headers={"X-Podiam-Role": readiness.role})


async def metrics(request: web.Request) -> web.Response:
    # The default registry, as prometheus_client's own server serves it.
    body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def make_app(probe: Probe) -> web.Application:
    app = web.Application()
    app[PROBE] = probe
    app[LAST_LOGGED] = []
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


@contextlib.asynccontextmanager
async def serve(address: str, port: int, probe: Probe) -> AsyncIterator[None]:
    """Listen until the context ends; ``port`` 0 means off."""
    if not port:
        yield
        return
    runner = web.AppRunner(make_app(probe), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, address, port).start()
        logger.info("serving /metrics and /readyz on %s:%d", address, port)
        yield
    finally:
        await runner.cleanup()
