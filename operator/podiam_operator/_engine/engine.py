"""The engine itself: facts in, the start, and what each change of the world sets off (the jobs do the rest)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any, Literal

from podiam_operator._core import decide, facts, policy, roles, world
from podiam_operator._engine import ports
from podiam_operator._engine.defaults import DefaultRoleNotes
from podiam_operator._engine.events import Events
from podiam_operator._engine.owned import OwnedBindings
from podiam_operator._engine.statuses import BindingStatuses
from podiam_operator._engine.supply import NodeViews, Supply
from podiam_operator._engine.taints import NodeTaints
from podiam_operator._engine.tasks import Tasks
from podiam_operator._kits import clock as clocks
from podiam_operator._kits import push, sa_keys, sts

logger = logging.getLogger(__name__)

# Where start() is, for /readyz and the published state: waiting for the initial listing (before
# start() runs), for leadership, for the operator's own AWS identity, for the first credentials, or done.
Phase = Literal["listing", "standby", "identity", "warming-up", "active"]
WARMUP_TIMEOUT = 30.0  # how long a (new) leader waits for credentials before its first snapshots
IDENTITY_TIMEOUT = 30.0  # how long it waits for its own AWS identity (role names need its account) before going on
IDENTITY_RETRY_MAX = 15.0  # longest wait between two GetCallerIdentity attempts
# How long a new leader's status writes for every binding wait for its first snapshots to reach every proxy
# (they would share the CPU and the API server with those pushes; a change's own status write never waits).
FIRST_ROUND_WAIT = 30.0


@dataclasses.dataclass(frozen=True)
class Indexes:
    """The operator's starting picture, listed before anything is watched."""

    pods: Iterable[facts.PodFacts]
    namespaces: Iterable[policy.NamespacePolicy]
    bindings: Iterable[facts.BindingFacts]
    proxies: Iterable[facts.ProxyFacts]
    tainted_nodes: Iterable[str]
    service_accounts: Iterable[facts.ServiceAccountFacts] = ()


class Engine:
    def __init__(
        self,
        *,
        config: decide.Config,
        base: roles.BaseArn | None,
        cache: sts.CredentialCache,
        pusher_factory: ports.PusherFactory,
        kube: ports.Kube,
        clock: clocks.Clock,
        node_taint: str,
        manage_node_taint: bool,
        leadership: ports.Leadership | None = None,
        identity: ports.Identity | None = None,
        own: world.OwnPods | None = None,
        reader: facts.Reader = facts.DEFAULT_READER,
        sa_keys: sa_keys.Source | None = None,
    ) -> None:
        self.reader = reader
        self.world = world.World(config, base, own, reader.rules)
        self.cache = cache
        self.leadership = leadership
        # The API server's service-account keys for the proxies (None: no container-credentials path).
        self._keys = sa_keys
        # The operator's own AWS identity, asked once this replica leads; its account resolves role
        # names when no base ARN is configured.
        self._identity = identity
        self.caller_arn: str | None = None
        self.identity_error: str | None = None
        self.phase: Phase = "listing"
        self._start_lock = asyncio.Lock()
        self._tasks = Tasks()
        self._events = Events(kube, self._tasks, self.world)
        views = NodeViews(self.world, cache)
        self._pusher = pusher_factory(views.desired, views.credentials, self._proxy_synced, views.pending)
        self._statuses = BindingStatuses(self.world, cache, kube, clock, self._events)
        self._supply = Supply(self.world, cache, self._pusher, self._statuses, self._events)
        self._owned = OwnedBindings(self.world, kube, self._events)
        self._taints = NodeTaints(kube, key=node_taint, manage=manage_node_taint)
        self._defaults = DefaultRoleNotes(self.world)
        self._first_round: set[str] = set()  # nodes whose proxy awaits this leader's first snapshot
        self._first_round_done = asyncio.Event()
        self._pushing_since = 0.0

    # --- what others read -------------------------------------------------------

    @property
    def started(self) -> bool:
        """The operator's picture is complete and this replica pushes it."""
        return self.phase == "active"

    @property
    def tainted(self) -> frozenset[str]:
        """The nodes that have the start-up taint."""
        return self._taints.tainted

    def proxy_states(self) -> dict[str, push.ProxyState]:
        """Each known node's proxy, as its pusher knows it."""
        return self._pusher.states()

    # --- lifecycle ------------------------------------------------------------

    def load(self, indexes: Indexes) -> None:
        """The starting picture, before any change (the watches follow on from it)."""
        for namespace in indexes.namespaces:
            self.world.set_namespace(namespace)
        for account in indexes.service_accounts:
            self.world.set_service_account(account)
        for binding in indexes.bindings:
            self.world.set_binding(binding)
        for pod in indexes.pods:
            self.world.set_pod(pod)
        for proxy in indexes.proxies:
            self.world.set_proxy(proxy.node, proxy)
            self._pusher.set_proxy(proxy.node, proxy)
        self._taints.load(indexes.tainted_nodes)

    def begin(self, *followers: Coroutine[Any, Any, None]) -> None:
        """Start in the background (:meth:`start`), with ``followers`` (the watches) running from now on, on a
        standby too: its picture stays current, so a takeover lists nothing."""
        for number, follower in enumerate(followers):
            self._tasks.spawn(follower, f"follow-{number}")
        self._tasks.spawn(self.start(), "start")

    async def start(self, indexes: Indexes | None = None) -> None:
        """Once: load the picture (unless :meth:`load` did), lead, fetch credentials, then push."""
        async with self._start_lock:
            if self.started:
                return
            if indexes is not None:
                self.load(indexes)
            if self.leadership is not None:
                self.phase = "standby"
                standing_by = time.monotonic()
                await self.leadership.wait_until_leader()
                logger.info("leading after %.1f s as a standby", time.monotonic() - standing_by)
            # Leading from here on. Our own pods' entries first: they need no AWS, and
            # without them an operator on the pod network cannot reach AWS at all.
            self.phase = "identity"
            self._pusher.announce()
            if self._identity is not None:
                learning = self._tasks.spawn(self._learn_identity(self._identity), "identity")
                if self.world.base is None:
                    await asyncio.wait([learning], timeout=IDENTITY_TIMEOUT)
            self.phase = "warming-up"
            keys = self.world.used_keys()
            logger.info("starting with %d pods, %d bindings, %d proxies, %d credential sets to fetch",
                        len(self.world.pods), len(self.world.bindings), len(self.world.proxies), len(keys))
            # A new leader's first snapshots replace what the proxies hold: fetch
            # every credential set first, so that no pod loses its credentials
            # (and the service-account keys, which snapshots carry).
            self._statuses.hold_background()  # the fetches mark every binding of their role
            warming = time.monotonic()
            fetches = [asyncio.ensure_future(self._supply.fetch(key)) for key in keys]
            if self._keys is not None:
                fetches.append(asyncio.ensure_future(self._first_keys(self._keys)))
            if fetches:
                await asyncio.wait(fetches, timeout=WARMUP_TIMEOUT)
            logger.info("credentials fetched in %.1f s; pushing", time.monotonic() - warming)
            self.phase = "active"
            self._first_round = {node for node, state in self._pusher.states().items() if state.known}
            if not self._first_round:
                self._first_round_done.set()
            self._pushing_since = time.monotonic()
            self._tasks.spawn(self._statuses_after_first_round(), "first-round")
            self._pusher.start()
            self._tasks.spawn(self._supply.refresh_forever(), "refresher")
            if self._keys is not None:
                self._tasks.spawn(self._keys.run(self._pusher.poke_all), "service-account-keys")
            self._tasks.spawn(self._statuses.run(), "status-writer")
            self._tasks.spawn(self._owned.run(), "owned-bindings")
            if self.leadership is not None:
                self._tasks.spawn(self.leadership.watch(), "leadership")
            self._statuses.mark(self.world.bindings, background=True)
            self._owned.mark({k for k, p in self.world.pods.items() if p.role is not None or self.world.bindings.get(k)})
            for key, decision in self.world.decisions.items():
                self._events.pod_decision(key, decision)
            self._defaults.note_everywhere()

    async def _statuses_after_first_round(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_round_done.wait(), FIRST_ROUND_WAIT)
        if self._first_round:
            logger.info("%d proxies still await this leader's first snapshot after %.0f s: writing statuses anyway",
                        len(self._first_round), FIRST_ROUND_WAIT)
        self._statuses.release_background()

    @staticmethod
    async def _first_keys(source: sa_keys.Source) -> None:
        try:
            await source.refresh()
        except sa_keys.KeysError:
            pass  # the refresher says why, and retries

    async def _learn_identity(self, identity: ports.Identity) -> None:
        """GetCallerIdentity until it answers, with backoff; never fatal (liveness stays green), always said."""
        delay = 1.0
        while True:
            try:
                arn, account = await identity()
                base = roles.BaseArn.from_caller_identity(arn, account)
                break
            except (sts.StsError, roles.RoleError) as error:
                self.identity_error = f"GetCallerIdentity failed ({error}); retrying in {delay:.0f}s"
                logger.error("the operator's own AWS identity is unknown: %s", self.identity_error)
            await asyncio.sleep(delay)
            delay = min(IDENTITY_RETRY_MAX, delay * 2)
        self.caller_arn, self.identity_error = arn, None
        if self.world.base is not None:
            logger.info("the operator's AWS identity is %s (role names resolve against %s)", arn, self.world.base.prefix)
            return
        logger.info("the operator's AWS identity is %s: role names resolve against %s", arn, base.prefix)
        delta = self.world.set_base(base)
        if self.started:
            self._apply(delta)
            self._defaults.note_everywhere()
            # Pods whose role name could not be resolved before now get their bindings.
            self._owned.mark(delta.pods)

    async def close(self) -> None:
        await self._tasks.close()
        await self._pusher.close()

    # --- facts in -----------------------------------------------------------------

    def pod_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        if event_type == "DELETED":
            delta = self.world.delete_pod(meta.get("namespace", ""), meta.get("name", ""))
        else:
            delta = self.world.set_pod(facts.pod_facts(body, self.reader))
        key = (meta.get("namespace", ""), meta.get("name", ""))
        self._apply(delta)
        if event_type != "DELETED":
            self._owned.mark([key])
        else:
            self._events.forget(meta.get("uid", ""))
            self._owned.pod_deleted(key)

    def proxy_event(self, event_type: str | None, body: dict[str, Any], node_hint: str | None = None) -> None:
        proxy = None if event_type == "DELETED" else facts.proxy_facts(body)
        node = proxy.node if proxy else (body.get("spec", {}).get("nodeName") or node_hint)
        if not node:
            return
        current = self.world.proxies.get(node)
        if proxy is None and current is not None and current.pod_uid != body.get("metadata", {}).get("uid"):
            return  # an old proxy pod of this node went away; the current one stays
        if self.world.set_proxy(node, proxy):
            self._pusher.set_proxy(node, proxy)

    def namespace_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body.get("metadata", {}).get("name", "")
        if event_type == "DELETED":
            self._apply(self.world.delete_namespace(name))
            self._defaults.forget(name)
        else:
            self._apply(self.world.set_namespace(facts.namespace_policy(body, self.reader)))
            if self.started:
                self._defaults.note(name)

    def service_account_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A ServiceAccount changed: with --irsa-service-accounts, its pods may gain or lose its role at once."""
        if not self.world.config.irsa:
            return
        meta = body.get("metadata", {})
        if event_type == "DELETED":
            self._apply(self.world.delete_service_account(meta.get("namespace", ""), meta.get("name", "")))
            self._events.forget(meta.get("uid", ""))
        else:
            self._apply(self.world.set_service_account(facts.service_account_facts(body)))

    def binding_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            delta = self.world.delete_binding(*key)
            self._statuses.forget(key)
            self._events.forget(meta.get("uid", ""))
        else:
            binding = facts.binding_facts(body)
            delta = self.world.set_binding(binding)
            if binding.pod_owned:
                self._owned.binding_seen(key)
            status = body.get("status") or {}
            if status.get("observedGeneration") != binding.generation:
                delta.bindings.add(key)
        self._apply(delta)
        # Pod-owned: recreate it if a user deleted it while the annotation stays; fix edited specs.
        if key in self.world.pods:
            self._owned.mark([key])

    def node_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body.get("metadata", {}).get("name", "")
        if event_type != "DELETED" and facts.node_has_taint(body, self._taints.key):
            if self._taints.add(name) and self._pusher.synced_once(name) and self.started:
                self._tasks.spawn(self._taints.lift(name), f"untaint-{name}")
        else:
            self._taints.discard(name)

    # --- consequences ----------------------------------------------------------------

    def _apply(self, delta: world.Delta) -> None:
        if not delta or not self.started:
            return
        for key in delta.keys_used:
            self._tasks.spawn(self._supply.fetch(key), "fetch")
        ready_keys = {k for k in delta.keys_used if self.cache.usable(k) is not None}
        nodes = set(delta.nodes)
        for key in ready_keys:
            nodes |= self.world.nodes_using(key)
        self._pusher.poke(nodes)
        if delta.bindings:
            self._statuses.mark(delta.bindings)
        for pod_key in delta.pods:
            decision = self.world.decisions.get(pod_key)
            if decision is not None:
                self._events.pod_decision(pod_key, decision)

    async def _proxy_synced(self, node: str) -> None:
        """A proxy has its snapshot: its node may now run pods (lift the start-up taint)."""
        if node in self._first_round:
            self._first_round.discard(node)
            if not self._first_round:
                logger.info("every proxy holds this leader's first snapshot, %.1f s after the first push",
                            time.monotonic() - self._pushing_since)
                self._first_round_done.set()
        await self._taints.lift(node)
