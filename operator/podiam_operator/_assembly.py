"""Builds the operator from the settings: its API client, its TLS, and the engine (STS source and cache, push
client, leadership), each made once and passed where it is needed.

Nothing here calls AWS, so the start-up handler ends (and kopf's liveness
endpoint answers) whether or not the operator has AWS credentials yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from podiam_operator import _metrics, _settings
from podiam_operator._core import decide, facts, policy, published, roles, world
from podiam_operator._engine import Engine, Indexes, publisher
from podiam_operator._engine import watches as enginewatches
from podiam_operator._kits import clock as clocks
from podiam_operator._kits import kube as kubes
from podiam_operator._kits import leadership as leaderships
from podiam_operator._kits import gcpauses, push, retries, sa_keys, sts, tlsfiles
from podiam_operator.tls import report as tlsreport
from podiam_operator.tls import runtime as tlsruntime

logger = logging.getLogger(__name__)



def region(settings: _settings.OperatorSettings) -> str | None:
    """The STS region when configured; None: the source asks the node's metadata service at its first call."""
    return settings.sts_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def reader(settings: _settings.OperatorSettings) -> facts.Reader:
    """Which annotations name roles and policies (kube2iam's --iam-role-key, --iam-external-id, --namespace-key...)."""
    rules = policy.Rules(settings.namespace_key, settings.namespace_restriction_format, not settings.disable_strict_namespace_regexp)
    return facts.Reader(settings.iam_role_key, settings.iam_external_id, rules)


def config(settings: _settings.OperatorSettings) -> decide.Config:
    return decide.Config(
        default_duration=settings.session_duration,
        session_name=settings.session_name,
        per_pod=settings.per_pod_sessions,
        allow_mirror_pods=settings.allow_mirror_pods,
        default_role=settings.default_role,
        irsa=settings.irsa_service_accounts,
        cluster_name=settings.cluster_name,
        container_credentials=settings.container_credentials,
    )


def own_pods(settings: _settings.OperatorSettings) -> world.OwnPods | None:
    """The operator's own pods, when they are to read the node's identity through their node's proxy."""
    if not settings.operator_node_identity:
        return None
    assert settings.operator_namespace and settings.operator_service_account  # checked by the settings
    return world.OwnPods(settings.operator_namespace, settings.operator_service_account)


def is_proxy(body: Any, settings: _settings.OperatorSettings) -> bool:
    """A proxy pod (the DaemonSet's): its node is where pushes go."""
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    return meta.get("namespace") == settings.proxy_namespace and all(labels.get(k) == v for k, v in settings.proxy_labels().items())


async def picture(settings: _settings.OperatorSettings, kube: kubes.Kube, reader: facts.Reader,
                  versions: dict[str, str]) -> Indexes:
    """Everything the engine decides from, listed in pages (raw JSON, only the facts kept), all kinds at once
    (the API server prepares one kind's pages while the operator reads another's); ``versions``: each kind's
    listing version, which its watch follows on from (:func:`watches`)."""
    pods: list[facts.PodFacts] = []
    proxies: list[facts.ProxyFacts] = []
    accounts: list[facts.ServiceAccountFacts] = []

    async def list_pods() -> None:
        async for body in kube.list_all("pods", versions):
            pods.append(facts.pod_facts(body, reader))
            if is_proxy(body, settings) and (proxy := facts.proxy_facts(body)) is not None:
                proxies.append(proxy)

    async def list_accounts() -> None:
        if settings.irsa_service_accounts:  # only those naming a role decide anything
            async for body in kube.list_all("serviceaccounts", versions):
                account = facts.service_account_facts(body)
                if account.role is not None:
                    accounts.append(account)

    async def list_namespaces() -> list[policy.NamespacePolicy]:
        return [facts.namespace_policy(body, reader) async for body in kube.list_all("namespaces", versions)]

    async def list_bindings() -> list[facts.BindingFacts]:
        return [facts.binding_facts(body) async for body in kube.list_all("bindings", versions)]

    async def list_tainted() -> list[str]:
        return [body.get("metadata", {}).get("name") async for body in kube.list_all("nodes", versions)
                if facts.node_has_taint(body, settings.node_taint)]

    began = time.monotonic()
    finished: dict[str, float] = {}  # kind -> seconds until its listing was done

    async def timed(kind: str, work: Coroutine[Any, Any, Any]) -> Any:
        result = await work
        finished[kind] = time.monotonic() - began
        return result

    namespaces, bindings, tainted, _, _ = await _all(
        timed("namespaces", list_namespaces()), timed("bindings", list_bindings()), timed("nodes", list_tainted()),
        timed("pods", list_pods()), timed("serviceaccounts", list_accounts()))
    logger.info("listed the cluster in %.1f s (%s done at %s s): %d pods, %d proxies, %d bindings, %d namespaces, %d tainted nodes",
                time.monotonic() - began, "/".join(finished), "/".join(f"{t:.1f}" for t in finished.values()),
                len(pods), len(proxies), len(bindings), len(namespaces), len(tainted))
    return Indexes(pods=pods, namespaces=namespaces, bindings=bindings, proxies=proxies, tainted_nodes=tainted,
                   service_accounts=accounts)


async def _all(*work: Coroutine[Any, Any, Any]) -> list[Any]:
    """Their results, run at once; the first failure is raised as it is, the others cancelled."""
    tasks = [asyncio.ensure_future(each) for each in work]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Feed:
    """The watches' changes to the engine, by kind (it is here that a pod is known to be a proxy)."""

    def __init__(self, settings: _settings.OperatorSettings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine

    def changed(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        engine = self._engine
        if kind == "pods":
            engine.pod_event(event_type, body)
            # A deleted pod may be its node's current proxy (the engine checks the uid): a relist's
            # deletions carry no labels to tell.
            if event_type == "DELETED" or is_proxy(body, self._settings):
                engine.proxy_event(event_type, body)
        elif kind == "bindings":
            engine.binding_event(event_type, body)
        elif kind == "namespaces":
            engine.namespace_event(event_type, body)
        elif kind == "serviceaccounts":
            engine.service_account_event(event_type, body)
        elif kind == "nodes":
            engine.node_event(event_type, body)


def watches(settings: _settings.OperatorSettings, kube: kubes.Kube, engine: Engine,
            versions: dict[str, str]) -> list[Coroutine[Any, Any, None]]:
    """A watch of each kind :func:`picture` listed, from its listing's version on."""
    followers = enginewatches.Watches(kube, Feed(settings, engine), engine.world, versions)
    return [followers.follow(kind) for kind in followers.kinds]


def start(settings: _settings.OperatorSettings, kube: kubes.Kube, reader: facts.Reader, engine: Engine,
          stack: contextlib.AsyncExitStack, say: Callable[[str], None]) -> None:
    """In the background: the starting picture listed (again and again while the API server refuses, e.g. for
    want of an RBAC verb; ``say`` gets why, for /readyz), then the engine started with its watches. kopf's
    liveness answers meanwhile."""

    async def list_then_start() -> None:
        retry = retries.Retry(retries.API_LOW, retries.API_HIGH)
        while True:
            versions: dict[str, str] = {}
            try:
                indexes = await picture(settings, kube, reader, versions)
                break
            except Exception as error:
                text = f"listing the cluster failed ({type(error).__name__}: {error}); retrying"
                if retry.failed(text):  # once per cause, not at every retry
                    logger.error("%s", text)
                say(text)
                await retry.pause()
        engine.load(indexes)
        engine.begin(*watches(settings, kube, engine, versions))

    # From the start: the listing's survivors (the picture) are frozen as they come, so that each full
    # collection during it walks only what the pages since the last one added (seven of 0.3 s at 150,000 pods).
    gcpauses.start_freezing()
    if engine.leadership is not None:
        _background(engine.leadership.observe(), stack)  # the settling interval passes while the cluster is listed
    _background(list_then_start(), stack)
    _background(gcpauses.tend(), stack)


async def kube(stack: contextlib.AsyncExitStack) -> kubes.Kube:
    """The operator's one API client (kopf has its own): the engine's calls, its TLS Secrets and its Events."""
    return await stack.enter_async_context(kubes.Kube())


async def tls(settings: _settings.OperatorSettings, kube: kubes.Kube, logger: tlsreport.Logger) -> tlsruntime.Tls:
    """The operator's TLS after its first pass, so that the push client finds its files (auto mode writes them).
    Never raises for TLS trouble: ``status()`` says what is wrong, and readiness reports it."""
    made = tlsruntime.Tls(settings, kube, logger)
    await made.check_once(may_write=True)
    return made


async def build(
    settings: _settings.OperatorSettings, stack: contextlib.AsyncExitStack, kube: kubes.Kube, tls: tlsruntime.Tls, *,
    identity: str, priority: int,
) -> Engine:
    if not settings.standalone:
        await kube.ensure_peering(settings.peering_name)
    source = await stack.enter_async_context(
        sts.AioBotocoreSource(
            region=region(settings),
            endpoint_url=settings.sts_endpoint_url,
            timeout=settings.sts_timeout,
            assume_role_arn=settings.assume_role_arn,
            max_connections=settings.sts_concurrency,
        )
    )
    # No STS call here: a standby needs no AWS, and the active replica asks for its
    # identity only after pushing its own pods' entries (Engine.start).
    base = roles.BaseArn.parse(settings.base_role_arn) if settings.base_role_arn else None
    clock = clocks.SystemClock()
    cache = sts.CredentialCache(
        source,
        clock,
        concurrency=settings.sts_concurrency,
        namespace_burst=settings.sts_namespace_burst,
        namespace_rate=settings.sts_namespace_rate,
        attempts=settings.sts_attempts,
        retry_base=settings.sts_retry_base,
        refresh_point=settings.refresh_point,
        min_remaining=settings.effective_min_remaining,
        failure_retry_max=settings.failure_retry_max,
    )
    _metrics.configure(name_labels=settings.metrics_name_labels,
                       tls_files={"cert": settings.tls_client_cert_file, "ca": settings.tls_ca_file})
    client = push.Client(
        tlsfiles.ClientTls(settings.tls_client_cert_file, settings.tls_client_key_file, settings.tls_ca_file),
        server_name=settings.proxy_server_name,
        timeout=settings.push_timeout,
        concurrency=settings.push_concurrency,
        operator_identity=settings.tls_operator_identity,
        keepalive=min(60.0, settings.anti_entropy_interval + 15.0),
    )

    keys = sa_keys.Source(kube, settings.service_account_keys_interval) if settings.container_credentials else None

    def pusher_factory(desired: push.DesiredFn, credentials: push.CredentialsFn, synced: push.SyncedFn,
                       pending: push.PendingFn) -> push.Pusher:
        return push.Pusher(
            client, desired, credentials, synced, port=settings.proxy_control_port, anti_entropy=settings.anti_entropy_interval,
            pending=pending, keys=keys or push.no_keys,
        )

    leadership = None
    if not settings.standalone:
        leadership = leaderships.Leadership(
            kube, name=settings.peering_name, identity=identity, priority=priority, interval=max(1.0, settings.peering_lifetime / 3)
        )
    engine = Engine(
        config=config(settings),
        reader=reader(settings),
        base=base,
        cache=cache,
        pusher_factory=pusher_factory,
        kube=kube,
        clock=clock,
        node_taint=settings.node_taint,
        manage_node_taint=settings.manage_node_taint,
        leadership=leadership,
        identity=source.caller_identity,
        own=own_pods(settings),
        sa_keys=keys,
    )
    _metrics.ACTIVE.set_function(lambda: 1 if engine.started else 0)
    _metrics.observe_proxies(engine.proxy_states)
    stack.push_async_callback(engine.close)
    # Renewals, rotations and re-checks; only the active replica renews or rotates (standbys follow the Secrets).
    _background(tls.run(is_active=lambda: bool(engine.started)), stack)
    if settings.status_configmap:
        _publish(settings, engine, kube, tls, identity, stack)
    return engine


def _background(work: Coroutine[Any, Any, None], stack: contextlib.AsyncExitStack) -> None:
    """Runs ``work`` until the stack closes."""
    task = asyncio.ensure_future(work)

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)


def _publish(settings: _settings.OperatorSettings, engine: Engine, kube: kubes.Kube, tls: tlsruntime.Tls,
             identity: str, stack: contextlib.AsyncExitStack) -> None:
    """The active replica's state for ``kubectl podiam``, in a ConfigMap of the operator's namespace."""
    own = own_pods(settings)
    decisions = published.encode_decisions(engine.world.config, engine.reader, own.namespace if own else None,
                                           own.service_account if own else None)
    writer = publisher.Publisher(
        engine, kube, namespace=settings.operator_namespace or settings.proxy_namespace, name=settings.status_configmap,
        identity=identity, decisions=decisions, node_taint=settings.node_taint,
        tls_status=lambda: (tls.status().ok, tls.status().message),
        client_cert=settings.tls_client_cert_file, ca_file=settings.tls_ca_file,
    )
    _background(writer.run(), stack)
