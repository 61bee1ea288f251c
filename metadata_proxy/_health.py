"""Probes and metrics on the health port (plain HTTP, no secrets)."""

from __future__ import annotations

from aiohttp import web

from metadata_proxy import _interception, _metrics, _store

STORE = web.AppKey("store", _store.Store)
METRICS = web.AppKey("metrics", _metrics.Metrics)
INTERCEPTION = web.AppKey("interception", _interception.Checker)


async def healthz(request: web.Request) -> web.Response:
    # Answering at all means the event loop turns: that is liveness.
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    if not store.ready:
        return web.Response(status=503, text="waiting for the operator's first snapshot\n")
    checker = request.app.get(INTERCEPTION)
    if checker is not None and checker.problem is not None:
        # Serving, but some pods' requests never get here: a rollout must stop at this node.
        return web.Response(status=503, text=f"not ready: {checker.problem}\n")
    return web.Response(text=f"ready: snapshot {store.snapshot_generation}, {store.pod_count} pods, {store.role_count} roles\n")


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].exposition(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def make_app(store: _store.Store, metrics_: _metrics.Metrics, interception: _interception.Checker | None = None) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app[METRICS] = metrics_
    if interception is not None:
        app[INTERCEPTION] = interception
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
