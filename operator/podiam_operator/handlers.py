"""kopf handlers: watch-only (events and indexes), each delegating to the engine.

Pods, namespaces, ServiceAccounts and nodes are only watched: there are no
change-detecting handlers for them, so kopf never writes progress
annotations or finalizers to them. PodRoleBindings are watched too; their
status is written by the engine, not by kopf's handler machinery.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf

from podiam_operator import _assembly, _health, _settings
from podiam_operator._core import facts, injection
from podiam_operator._engine import Engine, Indexes
from podiam_operator._kits import webhook_server

logger = logging.getLogger(__name__)


def _ops(memo: Any) -> _settings.OperatorSettings:
    return memo.podiam_settings  # type: ignore[no-any-return]


def _reader(memo: Any) -> facts.Reader:
    return memo.podiam_reader  # type: ignore[no-any-return]


def _is_proxy(body: Any, ops: _settings.OperatorSettings) -> bool:
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    return meta.get("namespace") == ops.proxy_namespace and all(labels.get(k) == v for k, v in ops.proxy_labels().items())


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    ops = _ops(memo)
    # Near-immediate handling: a pod's IP must reach its proxy well within a second.
    settings.batching.batch_window = 0.01
    # Per-object workers exit after 2 s without events: an idle worker holds its object's whole
    # last body, and after a burst of thousands of pods that was ~15 MB of RSS (bench/operator).
    settings.batching.idle_timeout = 2
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.peering.lifetime = ops.peering_lifetime
    settings.posting.level = logging.ERROR  # our own Events say what users need
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


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    stack = getattr(memo, "stack", None)
    if stack is not None:
        await stack.aclose()


# --- indexes: the complete picture at start ------------------------------------------


@kopf.index("pods")
def podiam_pods(body: kopf.Body, memo: Any, **_: Any) -> Any:
    pod = facts.pod_facts(body, _reader(memo))
    return {pod.key: pod}


@kopf.index("pods")
def podiam_proxies(body: kopf.Body, memo: Any, **_: Any) -> Any:
    if not _is_proxy(body, _ops(memo)):
        return None
    proxy = facts.proxy_facts(body)
    return {proxy.node: proxy} if proxy is not None else None


@kopf.index("namespaces")
def podiam_namespaces(body: kopf.Body, memo: Any, **_: Any) -> Any:
    namespace = facts.namespace_policy(body, _reader(memo))
    return {namespace.namespace: namespace}


@kopf.index("serviceaccounts")
def podiam_service_accounts(body: kopf.Body, memo: Any, **_: Any) -> Any:
    # Only those naming a role, and only when they may: the others decide nothing.
    account = facts.service_account_facts(body)
    return {account.key: account} if _ops(memo).irsa_service_accounts and account.role is not None else None


@kopf.index(facts.GROUP, facts.VERSION, facts.PLURAL)
def podiam_bindings(body: kopf.Body, **_: Any) -> Any:
    binding = facts.binding_facts(body)
    return {binding.key: binding}


@kopf.index("nodes")
def podiam_tainted_nodes(body: kopf.Body, memo: Any, **_: Any) -> Any:
    if facts.node_has_taint(body, _ops(memo).node_taint):
        return {body.get("metadata", {}).get("name"): True}
    return None


def _values(index: kopf.Index[Any, Any]) -> list[Any]:
    return [value for key in list(index) for value in index.get(key, [])]


async def _engine(memo: Any, kwargs: dict[str, Any]) -> Engine:
    engine: Engine = memo.engine
    if not engine.started:
        await engine.start(
            Indexes(
                pods=_values(kwargs["podiam_pods"]),
                namespaces=_values(kwargs["podiam_namespaces"]),
                bindings=_values(kwargs["podiam_bindings"]),
                proxies=_values(kwargs["podiam_proxies"]),
                tainted_nodes=[k for k in kwargs["podiam_tainted_nodes"]],
                service_accounts=_values(kwargs["podiam_service_accounts"]),
            )
        )
    return engine


# --- admission: the container-credentials path's variables and token ----------------------


@kopf.on.mutate("pods", id=injection.WEBHOOK_ID, operations=["CREATE"])
def inject_container_credentials(body: kopf.Body, patch: kopf.Patch, memo: Any,
                                 logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    # Never an exception: kopf would answer allowed=false, and a pod would be refused for the operator's trouble.
    ops = _ops(memo)
    try:
        fields = injection.for_pod(body, audience=ops.webhook_token_audience, expiration=ops.webhook_token_expiration)
    except Exception:
        logger.exception("container credentials: not injected (the pod is admitted unchanged)")
        return
    if fields is not None:
        for key, value in fields.items():
            patch.spec[key] = value
        logger.info("container credentials: %s and the projected token added", injection.URI_VARIABLE)


# --- events: incremental changes --------------------------------------------------------


@kopf.on.event("pods")
async def pod_event(type: str | None, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    raw = dict(body)
    proxy = _is_proxy(raw, _ops(memo))
    if proxy and not memo.engine.started:
        # A proxy that appears while the engine's start waits (for AWS, say) must get the
        # operator's own pods' entries now: they are how the operator reaches AWS. Not waiting
        # for the start here keeps this pod's next events (its node, its IP) coming; the start
        # loads every other pod from kopf's index, and a proxy pod decides nothing else.
        memo.engine.proxy_event(type, raw)
        return
    engine = await _engine(memo, kwargs)
    engine.pod_event(type, raw)
    if proxy:
        engine.proxy_event(type, raw)
    if type is None:  # kopf (re)listed pods: deletions meanwhile sent no event
        engine.relisted()


@kopf.on.event("namespaces")
async def namespace_event(type: str | None, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    (await _engine(memo, kwargs)).namespace_event(type, dict(body))


@kopf.on.event("serviceaccounts")
async def service_account_event(type: str | None, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    engine = await _engine(memo, kwargs)
    engine.service_account_event(type, dict(body))
    if type is None:  # kopf (re)listed ServiceAccounts: deletions meanwhile sent no event
        engine.relisted()


@kopf.on.event(facts.GROUP, facts.VERSION, facts.PLURAL)
async def binding_event(type: str | None, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    engine = await _engine(memo, kwargs)
    engine.binding_event(type, dict(body))
    if type is None:  # kopf (re)listed bindings: deletions meanwhile sent no event
        engine.relisted()


@kopf.on.event("nodes")
async def node_event(type: str | None, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    (await _engine(memo, kwargs)).node_event(type, dict(body))
