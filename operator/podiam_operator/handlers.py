"""kopf handlers: watch-only, each delegating to the engine.

Pods, namespaces, ServiceAccounts and nodes are only watched: there are no
change-detecting handlers for them, so kopf never writes progress
annotations or finalizers to them. PodRoleBindings are watched too; their
status is written by the engine, not by kopf's handler machinery. The
starting picture is listed by the start-up handler, not kept in kopf
indexes (see ``_assembly.picture``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf

from podiam_operator import _assembly, _health, _settings
from podiam_operator._core import facts, injection
from podiam_operator._engine import Engine, Indexes
from podiam_operator._kits import kopf_lean, webhook_server

logger = logging.getLogger(__name__)


def _ops(memo: Any) -> _settings.OperatorSettings:
    return memo.podiam_settings  # type: ignore[no-any-return]


def _reader(memo: Any) -> facts.Reader:
    return memo.podiam_reader  # type: ignore[no-any-return]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    ops = _ops(memo)
    # Per-object workers: one per object with events in flight, gone 0.5 s after its last event (an idle
    # worker holds its object's whole last body). At most 2,000 at once, the watch stream waiting beyond:
    # kopf's own first listing of 150,000 pods otherwise started a worker for each (4.9 GB; bench.scale).
    # Nothing a handler does waits for another object's events, so the limit cannot deadlock.
    settings.queueing.idle_timeout = 0.5
    settings.queueing.worker_limit = 2000
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.peering.lifetime = ops.peering_lifetime
    settings.posting.level = logging.ERROR  # our own Events say what users need
    settings.persistence.diffbase_storage = kopf_lean.Unused()  # event handlers only: no diffs to compute
    settings.networking.request_timeout = 30
    # The injection webhook (kopf starts its server after this handler, so after TLS wrote the certificate).
    # Registered by the chart, not by kopf (managed stays None). Off: a server that never listens, since kopf
    # refuses to run admission handlers without one.
    settings.admission.server = webhook_server.server(ops.webhook_address, ops.webhook_port, ops.webhook_cert_file,
                                                      ops.webhook_key_file)
    memo.stack = contextlib.AsyncExitStack()
    # First, so that /readyz says what start-up is waiting for.
    memo.probe = _health.Probe()
    await memo.stack.enter_async_context(_health.serve(ops.metrics_address, ops.metrics_port, memo.probe))
    memo.probe.stage = "preparing TLS"
    kube = await _assembly.kube(memo.stack)
    tls = await _assembly.tls(ops, kube, logger)
    memo.probe.tls_status = tls.status
    memo.probe.stage = "connecting to the Kubernetes API (the log says what fails)"
    memo.engine = await _assembly.build(ops, memo.stack, kube, tls, identity=memo.identity, priority=memo.priority)
    memo.probe.engine = memo.engine
    memo.probe.stage = "listing pods, namespaces, bindings and nodes"
    reader = _reader(memo)

    async def relist() -> Indexes:
        return await _assembly.picture(ops, kube, reader)

    memo.engine.load(await relist())  # before kopf watches: every event it delivers is as new or newer
    memo.engine.begin(relist)


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    stack = getattr(memo, "stack", None)
    if stack is not None:
        await stack.aclose()


# --- admission: the container-credentials path's variables and token ----------------------


@kopf.on.mutate("pods", id=injection.WEBHOOK_ID, operations=["CREATE"])
def inject_container_credentials(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    # Never an exception: kopf would answer allowed=false, and a pod would be refused for the operator's trouble.
    ops = _ops(memo)
    meta = body.get("metadata") or {}
    # At CREATE a pod may have only a generateName (a Deployment's pods): its name comes later.
    pod = f"{meta.get('namespace', '')}/{meta.get('name') or str(meta.get('generateName', '')) + '*'}"
    try:
        fields = injection.for_pod(body, audience=ops.webhook_token_audience, expiration=ops.webhook_token_expiration)
    except Exception:
        logger.exception("container credentials: not injected into pod %s (it is admitted unchanged)", pod)
        return
    if fields is not None:
        for key, value in fields.items():
            patch.spec[key] = value
        logger.info("container credentials: %s and the projected token added to pod %s", injection.URI_VARIABLE, pod)


# --- events: incremental changes (the picture itself was listed at start-up) --------------


@kopf.on.event("pods")
async def pod_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    raw = dict(body)
    engine: Engine = memo.engine
    engine.pod_event(type, raw)
    if _assembly.is_proxy(raw, _ops(memo)):
        engine.proxy_event(type, raw)
    if type is None:  # kopf (re)listed pods: deletions meanwhile sent no event
        engine.relisted()


@kopf.on.event("namespaces")
async def namespace_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.engine.namespace_event(type, dict(body))


@kopf.on.event("serviceaccounts")
async def service_account_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    engine: Engine = memo.engine
    engine.service_account_event(type, dict(body))
    if type is None:  # kopf (re)listed ServiceAccounts: deletions meanwhile sent no event
        engine.relisted()


@kopf.on.event(facts.GROUP, facts.VERSION, facts.PLURAL)
async def binding_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    engine: Engine = memo.engine
    engine.binding_event(type, dict(body))
    if type is None:  # kopf (re)listed bindings: deletions meanwhile sent no event
        engine.relisted()


@kopf.on.event("nodes")
async def node_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.engine.node_event(type, dict(body))
