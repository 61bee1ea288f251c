"""kopf handlers: start-up and clean-up, and the container-credentials admission webhook.

kopf runs the operator (peering, liveness, the webhook server) but watches
nothing itself: the start-up handler lists the starting picture and the
engine watches each kind from that listing on (``_engine.watches``). So
kopf never writes progress annotations or finalizers to anything, and
PodRoleBindings' status is written by the engine.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf

from podiam_operator import _assembly, _health, _settings
from podiam_operator._core import facts, injection
from podiam_operator._kits import webhook_server

logger = logging.getLogger(__name__)


def _ops(memo: Any) -> _settings.OperatorSettings:
    return memo.podiam_settings  # type: ignore[no-any-return]


def _reader(memo: Any) -> facts.Reader:
    return memo.podiam_reader  # type: ignore[no-any-return]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    ops = _ops(memo)
    # kopf watches only its peering object (the engine watches the rest itself, see _engine.watches).
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
    memo.probe.stage = "listing pods, namespaces, bindings and nodes"

    def say(text: str) -> None:
        memo.probe.stage = text

    _assembly.start(ops, kube, _reader(memo), memo.engine, memo.stack, say)


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
