"""The operator's push API (``wire``), served on the mutual-TLS control port.

The TLS handshake already refused clients without a certificate from the
configured CA; the middleware refuses certificates that do not name the
operator identity, before any handler runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pydantic
from aiohttp import web

from metadata_proxy import _metrics, _store, _tls, wire

logger = logging.getLogger(__name__)

STORE = web.AppKey("store", _store.Store)
METRICS = web.AppKey("metrics", _metrics.Metrics)
NODE_NAME = web.AppKey("node_name", str)
IDENTITY = web.AppKey("identity", str)

# A node's whole state: generous for per-pod sessions on a full node.
MAX_BODY = 16 * 1024 * 1024

_M = TypeVar("_M", bound=pydantic.BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def require_operator(request: web.Request, handler: Handler) -> web.StreamResponse:
    identity = request.app[IDENTITY]
    transport = request.transport
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    names = _tls.peer_identities(peercert)
    if identity not in names:
        reason = "no_certificate" if not peercert else "wrong_identity"
        request.app[METRICS].refused_clients.labels(reason).inc()
        logger.warning(
            "control request refused: the client certificate does not name the operator",
            extra={"peer": request.remote, "names": sorted(names), "expected": identity},
        )
        return _json_error(403, f"client certificate must name {identity!r}")
    response = await handler(request)
    if response.status == 200:
        request.app[METRICS].operator_contact.set(time.time())
    return response


async def _parse(request: web.Request, model: type[_M], kind: str) -> _M:
    metrics = request.app[METRICS]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.pushes.labels(kind, "too_large").inc()
        raise
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as error:
        metrics.pushes.labels(kind, "invalid").inc()
        # include_input=False: a rejected body may still hold secrets.
        details = error.errors(include_url=False, include_input=False, include_context=False)
        problems = [{"loc": [str(part) for part in item["loc"]], "msg": item["msg"]} for item in details]
        logger.warning("invalid push refused", extra={"kind": kind, "problems": json.dumps(problems)[:2000]})
        raise web.HTTPUnprocessableEntity(
            text=json.dumps({"error": f"invalid {kind}", "problems": problems}), content_type="application/json",
        ) from None


def _ack(request: web.Request, kind: str, ack: wire.Ack) -> web.Response:
    metrics = request.app[METRICS]
    metrics.pushes.labels(kind, "partly_rejected" if ack.rejected else "applied").inc()
    if ack.rejected:
        metrics.push_rejections.labels(kind).inc(len(ack.rejected))
        logger.warning(
            "push items rejected", extra={"kind": kind, "rejected": [r.model_dump() for r in ack.rejected]},
        )
    store = request.app[STORE]
    logger.info(
        "push applied",
        extra={"kind": kind, "applied": ack.applied, "rejected": len(ack.rejected), "pods": store.pod_count, "roles": store.role_count},
    )
    return web.Response(body=ack.model_dump_json().encode(), content_type="application/json")


async def post_changes(request: web.Request) -> web.Response:
    changes = await _parse(request, wire.Changes, "changes")
    return _ack(request, "changes", request.app[STORE].apply_changes(changes))


async def put_snapshot(request: web.Request) -> web.Response:
    snapshot = await _parse(request, wire.Snapshot, "snapshot")
    was_ready = request.app[STORE].ready
    ack = request.app[STORE].apply_snapshot(snapshot)
    if not was_ready:
        logger.info("first snapshot applied: ready", extra={"generation": snapshot.generation})
    return _ack(request, "snapshot", ack)


async def get_status(request: web.Request) -> web.Response:
    status = request.app[STORE].status(request.app[NODE_NAME])
    return web.Response(body=status.model_dump_json().encode(), content_type="application/json")


def make_app(
    store: _store.Store,
    metrics: _metrics.Metrics,
    node_name: str,
    operator_identity: str = wire.OPERATOR_IDENTITY,
) -> web.Application:
    app = web.Application(middlewares=[require_operator], client_max_size=MAX_BODY)
    app[STORE] = store
    app[METRICS] = metrics
    app[NODE_NAME] = node_name
    app[IDENTITY] = operator_identity
    app.router.add_post(wire.CHANGES_PATH, post_changes)
    app.router.add_put(wire.SNAPSHOT_PATH, put_snapshot)
    app.router.add_get(wire.STATUS_PATH, get_status)
    return app
