"""Pushes to the proxies: one worker per node, each with its own queue and backoff.

A worker holds what it believes its proxy holds (``sent``) and turns the
difference to the node's desired state into one ``POST /v1/changes`` at a
time; many changes coalesce into one request. Whenever that belief may be
wrong (first contact, a new or restarted proxy pod, a failed or rejected
push, a status that does not add up), the worker sends a full snapshot
instead. Every request has a timeout and the workers share nothing but a
concurrency bound, so a dead or slow node never delays another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pydantic

from metadata_proxy import wire
from podiam_operator import _metrics
from podiam_operator._core import facts, world
from podiam_operator._kits import limits, tlsfiles
from podiam_operator.tls import explain as tls_explain

logger = logging.getLogger(__name__)

DesiredFn = Callable[[str], world.NodeDesired]
# The node's pods granted a role that have no IP yet, by uid (the proxy may recognise them by the IP the node gave them).
PendingFn = Callable[[str], dict[str, wire.PendingPod]]
CredentialsFn = Callable[[str], "wire.RoleCredentials | None"]
# The API server's service-account keys, for the proxies' container-credentials path (None: not known).
KeysFn = Callable[[], "wire.ServiceAccountKeys | None"]
SyncedFn = Callable[[str], Awaitable[None]]


class PushFailed(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class ProxyState:
    """What one node's worker knows of its proxy: for readiness, metrics and ``kubectl podiam``."""

    node: str
    known: bool  # a proxy pod runs there (the operator saw it)
    synced: bool  # known, and it holds what the operator last sent (acknowledged, no resync pending)
    generation: int  # of the last snapshot it acknowledged
    entries: int  # pod entries it acknowledged
    token_only: int  # hostNetwork pods it acknowledged (container-credentials path only)
    roles: int
    last_push: float | None
    last_contact: float | None
    last_error: str | None


@dataclasses.dataclass
class _Sent:
    pods: dict[str, world.PodEntryPlan] = dataclasses.field(default_factory=dict)  # by uid
    roles: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> access key id (never the secret)
    pending: dict[str, wire.PendingPod] = dataclasses.field(default_factory=dict)  # by uid
    token_only: dict[str, world.TokenOnlyPlan] = dataclasses.field(default_factory=dict)  # by uid
    keys: str | None = None  # the fingerprint of the service-account keys sent


def no_pending(node: str) -> dict[str, wire.PendingPod]:
    return {}


def no_keys() -> wire.ServiceAccountKeys | None:
    return None


def _token_only(plan: world.TokenOnlyPlan) -> wire.TokenOnlyPod:
    return wire.TokenOnlyPod(uid=plan.uid, namespace=plan.namespace, name=plan.name, role_key=plan.key)


def _tls_failure(error: BaseException) -> bool:
    """Did TLS fail (the handshake, or an alert), rather than the network?"""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (aiohttp.ClientSSLError, ssl.SSLError)):
            return True
        if isinstance(getattr(seen, "os_error", None), ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def explain(error: BaseException, server_name: str) -> str:
    """A failed request in podiam's terms: what failed and, for TLS, what to change."""
    if _tls_failure(error):
        return tls_explain.explain_handshake_failure(error, server_name)
    if isinstance(error, aiohttp.ServerDisconnectedError) or (
            isinstance(error, aiohttp.ClientOSError) and error.errno == errno.ECONNRESET):
        # With TLS 1.3 the proxy checks the operator's certificate after the client's side of the
        # handshake is done, and its refusal reaches us as a bare disconnect: a close, or a reset
        # when the request was already sent and unread (a snapshot's body).
        return (f"the proxy closed the connection without answering ({error}); if every push fails so, the proxy "
                "refuses the operator's client certificate in the TLS handshake: its CA is not in the proxies' CA file "
                "(the proxies' and the operator's Secrets come from different CAs), or it has expired")
    return f"{type(error).__name__}: {error}"


def _entry(plan: world.PodEntryPlan) -> wire.PodEntry:
    if plan.key is None:
        return wire.PodEntry(ip=plan.ip, uid=plan.uid, namespace=plan.namespace, name=plan.name, node_identity=True)
    return wire.PodEntry(ip=plan.ip, uid=plan.uid, namespace=plan.namespace, name=plan.name, role_key=plan.key)


class Client:
    """HTTPS to the proxies' control ports with the operator's client certificate."""

    def __init__(self, tls: tlsfiles.ClientTls, *, server_name: str, timeout: float, concurrency: int,
                 operator_identity: str = wire.OPERATOR_IDENTITY, keepalive: float = 45.0) -> None:
        self.tls = tls
        self.server_name = server_name
        self.operator_identity = operator_identity  # what its certificate names, for a refusal's explanation
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 3.0))
        self.semaphore = limits.Limiter(concurrency)
        # Longer than the anti-entropy interval, so that each check reuses its node's connection rather than
        # making a TLS handshake (2,000 every 30 s was a tenth of the operator's CPU); shorter than the
        # proxies' own 75 s, so that the proxy never closes a connection the operator is about to use.
        # One connection per node: its worker sends one request at a time (each holds TLS state and buffers).
        self.keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._version = -1

    def _current(self) -> aiohttp.ClientSession:
        context = self.tls.context()
        if self._session is None or self._version != self.tls.version:
            old = self._session
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=0, limit_per_host=1, keepalive_timeout=self.keepalive),
                timeout=self.timeout,
                raise_for_status=False,
            )
            self._version = self.tls.version
            if old is not None:
                asyncio.get_running_loop().call_later(30, lambda: asyncio.ensure_future(old.close()))
        return self._session

    async def request(self, method: str, url: str, body: bytes | None, kind: str, *, node: str = "") -> bytes:
        started = time.monotonic()
        result = "error"
        try:
            async with self.semaphore:
                session = self._current()
                headers = {"Content-Type": "application/json"} if body is not None else {}
                async with session.request(method, url, data=body, headers=headers, server_hostname=self.server_name) as response:
                    payload = await response.read()
                    result = str(response.status)
                    if response.status != 200:
                        text = payload[:300].decode(errors="replace")
                        refusal = tls_explain.explain_refusal(response.status, text, self.operator_identity)
                        raise PushFailed(f"{method} {url}: {refusal or f'HTTP {response.status}: {text}'}")
                    result = "ok"
                    return payload
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, tlsfiles.TlsMaterialError) as error:
            result = type(error).__name__
            raise PushFailed(f"{method} {url}: {explain(error, self.server_name)}") from None
        finally:
            _metrics.PUSHES.labels(kind, result).inc()
            elapsed = time.monotonic() - started
            _metrics.PUSH_LATENCY.labels(kind, result).observe(elapsed)
            _metrics.node_push(node, result, elapsed)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class NodeWorker:
    def __init__(
        self,
        node: str,
        client: Client,
        desired: DesiredFn,
        credentials: CredentialsFn,
        on_synced: SyncedFn,
        *,
        port: int,
        anti_entropy: float,
        pending: PendingFn = no_pending,
        keys: KeysFn = no_keys,
    ) -> None:
        self.node = node
        self.keys = keys
        self.client = client
        self.desired = desired
        self.pending = pending
        self.credentials = credentials
        self.on_synced = on_synced
        self.port = port
        self.anti_entropy = anti_entropy
        self.proxy: facts.ProxyFacts | None = None
        self.sent = _Sent()
        # False until the operator holds its picture of the cluster: only its own pods' entries go out.
        self.full = False
        self.need_snapshot = True
        self.generation = 0
        self.synced_once = False
        self.dirty = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.last_push: float | None = None  # wall-clock time of the last snapshot or changes the proxy acknowledged
        self.last_contact: float | None = None  # of the last exchange that succeeded (a status check included)

    @property
    def base_url(self) -> str:
        assert self.proxy is not None and self.proxy.host_ip is not None
        host = self.proxy.host_ip
        return f"https://[{host}]:{self.port}" if ":" in host else f"https://{host}:{self.port}"

    @property
    def in_sync(self) -> bool:
        """Its proxy holds what was sent to it: acknowledged, and no resync pending."""
        return self.proxy is not None and self.synced_once and not self.need_snapshot

    def state(self) -> ProxyState:
        return ProxyState(self.node, self.proxy is not None, self.in_sync, self.generation, len(self.sent.pods),
                          len(self.sent.token_only), len(self.sent.roles), self.last_push, self.last_contact, self.last_error)

    def set_proxy(self, proxy: facts.ProxyFacts | None) -> None:
        old = self.proxy
        self.proxy = proxy
        if proxy is None or old is None or (old.pod_uid, old.restarts, old.host_ip) != (proxy.pod_uid, proxy.restarts, proxy.host_ip):
            # A new or restarted proxy holds nothing we sent: start over with a snapshot.
            self.need_snapshot = True
            self.sent = _Sent()
        self.dirty.set()

    def poke(self) -> None:
        self.dirty.set()

    def resync(self) -> None:
        self.need_snapshot = True
        self.dirty.set()

    async def run(self) -> None:
        backoff = 0.0
        next_check = time.monotonic() + self.anti_entropy
        while True:
            timeout = max(0.0, next_check - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), timeout)
            self.dirty.clear()
            check = time.monotonic() >= next_check
            if check:  # whatever happens below: a past next_check would make the wait above return at once, forever
                next_check = time.monotonic() + self.anti_entropy
            if self.proxy is None or not self.proxy.reachable:
                self.need_snapshot = True
                continue
            try:
                if check and self.full:  # announcements need no check: a snapshot follows them anyway
                    await self._check()
                if not self.full:
                    await self._announce()
                elif self.need_snapshot:
                    await self._snapshot()
                else:
                    await self._changes()
                backoff = 0.0
                self.last_contact = time.time()
                if self.last_error is not None:
                    logger.info("proxy on node %s reachable again", self.node)
                    self.last_error = None
            except PushFailed as error:
                self.need_snapshot = True
                if str(error) != self.last_error:
                    logger.warning("push to the proxy on node %s failed: %s", self.node, error)
                self.last_error = str(error)
                backoff = min(5.0, max(0.2, backoff * 2))
                await asyncio.sleep(backoff)
                self.dirty.set()  # try again

    def _roles_and_pods(self, desired: world.NodeDesired) -> tuple[dict[str, wire.RoleCredentials], dict[str, world.PodEntryPlan]]:
        roles = {}
        for key in desired.keys:
            credentials = self.credentials(key)
            if credentials is not None:
                roles[key] = credentials
        pods = {uid: plan for uid, plan in desired.pods.items()
                if plan.key is None or plan.key in roles or plan.key in self.sent.roles}
        return roles, pods

    async def _snapshot(self) -> None:
        desired = self.desired(self.node)
        roles, pods = self._roles_and_pods(desired)
        pods = {uid: plan for uid, plan in pods.items() if plan.key is None or plan.key in roles}
        pending = {uid: p for uid, p in self.pending(self.node).items() if p.role_key in roles}
        token_only = {uid: plan for uid, plan in desired.token_only.items() if plan.key in roles}
        keys = self.keys()
        self.generation = max(self.generation + 1, time.time_ns() // 1000)
        snapshot = wire.Snapshot(generation=self.generation, roles=list(roles.values()), pods=[_entry(p) for p in pods.values()],
                                 pending=list(pending.values()), token_only=[_token_only(p) for p in token_only.values()],
                                 service_account_keys=keys)
        ack = self._ack(await self.client.request("PUT", self.base_url + wire.SNAPSHOT_PATH, wire.encode(snapshot), "snapshot", node=self.node))
        self.sent = _Sent(pods=dict(pods), roles={k: c.access_key_id for k, c in roles.items()}, pending=pending,
                          token_only=token_only, keys=keys.fingerprint() if keys is not None else None)
        self.need_snapshot = False
        self.last_push = time.time()
        if ack.rejected:
            # A snapshot replaces everything, so a rejection means bad entries of ours: drop them, say so.
            for rejection in ack.rejected:
                logger.error("proxy on node %s rejected pod %s (%s): %s", self.node, rejection.uid, rejection.ip, rejection.reason)
                self.sent.pods.pop(rejection.uid, None)
                self.sent.pending.pop(rejection.uid, None)
                self.sent.token_only.pop(rejection.uid, None)
        logger.info("snapshot %d sent to node %s: %d pods, %d roles", self.generation, self.node, len(pods), len(roles))
        self.synced_once = True
        await self.on_synced(self.node)

    async def _announce(self) -> None:
        """Only the operator's own pods' node-identity entries, as changes: everything else the proxy holds stays.

        A newly active operator needs AWS (its identity, the credentials in
        use) before its first snapshot, and on the pod network it reaches AWS
        through these entries. A snapshot would replace what the previous
        leader pushed, so it waits; changes touch nothing else.
        """
        own = {uid: plan for uid, plan in self.desired(self.node).pods.items() if plan.node_identity}
        upsert = [plan for uid, plan in own.items() if self.sent.pods.get(uid) != plan]
        remove = [plan for uid, plan in self.sent.pods.items() if own.get(uid) != plan]
        if not (upsert or remove):
            return
        changes = wire.Changes(upsert_pods=[_entry(p) for p in upsert], remove_pods=[wire.PodRemoval(ip=p.ip, uid=p.uid) for p in remove])
        ack = self._ack(await self.client.request("POST", self.base_url + wire.CHANGES_PATH, wire.encode(changes), "changes", node=self.node))
        for plan in remove:
            self.sent.pods.pop(plan.uid, None)
        for plan in upsert:
            self.sent.pods[plan.uid] = plan
        for rejection in ack.rejected:  # e.g. the IP still held by an old pod: the first snapshot settles it
            logger.warning("proxy on node %s refused the operator's own pod %s (%s): %s", self.node, rejection.uid, rejection.ip, rejection.reason)
        names = ", ".join(f"{p.namespace}/{p.name}" for p in upsert)
        if names:
            logger.info("node %s: the operator's own pods %s read the node's identity through its proxy", self.node, names)

    async def _changes(self) -> None:
        desired = self.desired(self.node)
        roles, pods = self._roles_and_pods(desired)
        pending = {uid: p for uid, p in self.pending(self.node).items() if p.role_key in roles or p.role_key in self.sent.roles}
        upsert_roles = [c for key, c in roles.items() if self.sent.roles.get(key) != c.access_key_id]
        remove_roles = [key for key in self.sent.roles if key not in desired.keys]
        remove_pods = [plan for uid, plan in self.sent.pods.items() if pods.get(uid) != plan]
        upsert_pods = [plan for uid, plan in pods.items() if self.sent.pods.get(uid) != plan]
        remove_pending = [uid for uid, p in self.sent.pending.items() if pending.get(uid) != p]
        upsert_pending = [p for uid, p in pending.items() if self.sent.pending.get(uid) != p]
        token_only = {uid: held for uid, held in desired.token_only.items() if held.key in roles or held.key in self.sent.roles}
        remove_token_only = [uid for uid, held in self.sent.token_only.items() if token_only.get(uid) != held]
        upsert_token_only = [held for uid, held in token_only.items() if self.sent.token_only.get(uid) != held]
        keys = self.keys()
        new_keys = keys if keys is not None and keys.fingerprint() != self.sent.keys else None
        if not (upsert_roles or remove_roles or remove_pods or upsert_pods or remove_pending or upsert_pending
                or remove_token_only or upsert_token_only or new_keys):
            return
        changes = wire.Changes(
            upsert_roles=upsert_roles,
            remove_roles=remove_roles,
            upsert_pods=[_entry(p) for p in upsert_pods],
            remove_pods=[wire.PodRemoval(ip=p.ip, uid=p.uid) for p in remove_pods],
            upsert_pending=upsert_pending,
            remove_pending=remove_pending,
            upsert_token_only=[_token_only(p) for p in upsert_token_only],
            remove_token_only=remove_token_only,
            service_account_keys=new_keys,
        )
        ack = self._ack(await self.client.request("POST", self.base_url + wire.CHANGES_PATH, wire.encode(changes), "changes", node=self.node))
        self.last_push = time.time()
        for credentials in upsert_roles:
            self.sent.roles[credentials.key] = credentials.access_key_id
        for key in remove_roles:
            self.sent.roles.pop(key, None)
        for plan in remove_pods:
            self.sent.pods.pop(plan.uid, None)
        for plan in upsert_pods:
            self.sent.pods[plan.uid] = plan
        for uid in remove_pending:
            self.sent.pending.pop(uid, None)
        for announced in upsert_pending:
            self.sent.pending[announced.uid] = announced
        for uid in remove_token_only:
            self.sent.token_only.pop(uid, None)
        for held in upsert_token_only:
            self.sent.token_only[held.uid] = held
        if new_keys is not None:
            self.sent.keys = new_keys.fingerprint()
        if ack.rejected:
            logger.warning("proxy on node %s rejected %d pod entries (%s); sending a snapshot",
                           self.node, len(ack.rejected), ack.rejected[0].reason)
            self.need_snapshot = True
            self.dirty.set()

    async def _check(self) -> None:
        """Anti-entropy: does the proxy hold what we think it holds?"""
        payload = await self.client.request("GET", self.base_url + wire.STATUS_PATH, None, "status", node=self.node)
        try:
            status = wire.ProxyStatus.model_validate_json(payload)
        except pydantic.ValidationError as error:
            raise PushFailed(f"bad status from node {self.node}: {error}") from None
        if self.need_snapshot:
            return
        if (
            not status.ready
            or status.snapshot_generation != self.generation
            or status.pods != len(self.sent.pods)
            or status.roles != len(self.sent.roles)
            or status.pending != len(self.sent.pending)
            or status.token_only != len(self.sent.token_only)
            or (self.sent.keys is not None and status.service_account_keys != self.sent.keys)
        ):
            logger.warning(
                "proxy on node %s drifted (generation %s, %d pods, %d roles, %d pending, %d token-only, keys %s; "
                "expected %s, %d, %d, %d, %d, %s): resyncing",
                self.node, status.snapshot_generation, status.pods, status.roles, status.pending, status.token_only,
                status.service_account_keys, self.generation, len(self.sent.pods), len(self.sent.roles),
                len(self.sent.pending), len(self.sent.token_only), self.sent.keys,
            )
            self.need_snapshot = True

    @staticmethod
    def _ack(payload: bytes) -> wire.Ack:
        try:
            return wire.Ack.model_validate_json(payload)
        except pydantic.ValidationError as error:
            raise PushFailed(f"bad acknowledgement: {error}") from None


class Pusher:
    """The set of node workers; the engine tells it which nodes changed."""

    def __init__(
        self,
        client: Client,
        desired: DesiredFn,
        credentials: CredentialsFn,
        on_synced: SyncedFn,
        *,
        port: int,
        anti_entropy: float,
        pending: PendingFn = no_pending,
        keys: KeysFn = no_keys,
    ) -> None:
        self.client = client
        self._keys = keys
        self._desired = desired
        self._pending = pending
        self._credentials = credentials
        self._on_synced = on_synced
        self.port = port
        self.anti_entropy = anti_entropy
        self.workers: dict[str, NodeWorker] = {}
        self.enabled = False  # workers run (announce() or start() was called)
        self.full = False  # start() was called: everything goes out, not only the operator's own pods

    def _worker(self, node: str) -> NodeWorker:
        worker = self.workers.get(node)
        if worker is None:
            worker = self.workers[node] = NodeWorker(
                node, self.client, self._desired, self._credentials, self._on_synced, port=self.port, anti_entropy=self.anti_entropy,
                pending=self._pending, keys=self._keys,
            )
            worker.full = self.full
            if self.enabled:
                worker.task = asyncio.ensure_future(worker.run())
        return worker

    def announce(self) -> None:
        """Push only the operator's own pods' entries, as changes (before start; see NodeWorker._announce)."""
        self._run(full=False)

    def start(self) -> None:
        """Begin pushing everything (once the operator's model of the cluster is complete)."""
        self._run(full=True)

    def _run(self, *, full: bool) -> None:
        self.enabled = True
        self.full = full
        for worker in self.workers.values():
            if full and not worker.full:
                worker.full = True
                worker.resync()  # what the announcements left is replaced by the first snapshot
            if worker.task is None:
                worker.task = asyncio.ensure_future(worker.run())
            worker.dirty.set()

    def set_proxy(self, node: str, proxy: facts.ProxyFacts | None) -> None:
        self._worker(node).set_proxy(proxy)

    def synced_once(self, node: str) -> bool:
        """Has the node's proxy acknowledged a snapshot since the operator started?"""
        worker = self.workers.get(node)
        return worker is not None and worker.synced_once

    def states(self) -> dict[str, ProxyState]:
        return {node: worker.state() for node, worker in self.workers.items()}

    def poke_all(self) -> None:
        for worker in self.workers.values():
            worker.poke()

    def poke(self, nodes: set[str]) -> None:
        for node in nodes:
            worker = self.workers.get(node)
            if worker is not None:
                worker.poke()

    async def close(self) -> None:
        for worker in self.workers.values():
            if worker.task is not None:
                worker.task.cancel()
        await asyncio.gather(*(w.task for w in self.workers.values() if w.task is not None), return_exceptions=True)
        await self.client.close()
