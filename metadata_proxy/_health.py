"""Probes and metrics on the health port (plain HTTP, no secrets).

The port listens on the node's IP, where every pod can reach it (a
NetworkPolicy never applies on the host network). So it tells what anyone
may know: ``/healthz`` that the loop turns, ``/readyz`` a status word only
(``ready``, ``not ready: no snapshot``, ``not ready: interception``; the
details, such as the pods the rule misses, go to the log when the word
changes), ``/metrics`` counts with no IP, pod, role or certificate subject
in a label.
"""

from __future__ import annotations

import dataclasses
import logging

from aiohttp import web

from metadata_proxy import _interception, _metrics, _store

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Said:
    word: str = ""


STORE = web.AppKey("store", _store.Store)
METRICS = web.AppKey("metrics", _metrics.Metrics)
INTERCEPTION = web.AppKey("interception", _interception.Checker)
SAID = web.AppKey("said", _Said)


async def healthz(request: web.Request) -> web.Response:
    # Answering at all means the event loop turns: that is liveness.
    return web.Response(text="ok\n")


def _readiness(app: web.Application) -> tuple[str, dict[str, object]]:
    store = app[STORE]
    checker = app.get(INTERCEPTION)
    if not store.ready:
        return "not ready: no snapshot", {"detail": "waiting for the operator's first snapshot"}
    if checker is not None and checker.problem is not None:
        # Serving, but some pods' requests never get here: a rollout must stop at this node.
        return "not ready: interception", {"detail": checker.problem}
    return "ready", {"snapshot_generation": store.snapshot_generation, "pods": store.pod_count, "roles": store.role_count}


async def readyz(request: web.Request) -> web.Response:
    word, details = _readiness(request.app)
    said = request.app[SAID]
    if word != said.word:
        said.word = word
        logger.info("readiness: %s", word, extra=details)
    return web.Response(status=200 if word == "ready" else 503, text=word + "\n")


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].exposition(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def make_app(store: _store.Store, metrics_: _metrics.Metrics, interception: _interception.Checker | None = None) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app[METRICS] = metrics_
    app[SAID] = _Said()
    if interception is not None:
        app[INTERCEPTION] = interception
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
