"""The engine: the world model wired to the credential cache, the pushers and the Kubernetes API.

Handlers feed it facts; it works out the consequences: which credentials to
fetch, which nodes to push to, which binding statuses and Events to write,
which pod-owned bindings to create or delete, which start-up taints to lift.
Everything slow (STS, pushes, API writes) runs in background tasks, so a
handler returns at once and one slow part never holds up another.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

from kubernetes_asyncio.client.rest import ApiException

from metadata_proxy import wire
from podiam_operator import _metrics
from podiam_operator._core import decide, facts, policy, roles, world
from podiam_operator._kits import clock as clocks
from podiam_operator._kits import kube as kubes
from podiam_operator._kits import push, sa_keys, sts

logger = logging.getLogger(__name__)

Phase = Literal["listing", "standby", "identity", "warming-up", "active"]
WARMUP_TIMEOUT = 30.0  # how long a (new) leader waits for credentials before its first snapshots
IDENTITY_TIMEOUT = 30.0  # how long it waits for its own AWS identity (role names need its account) before going on
IDENTITY_RETRY_MAX = 15.0  # longest wait between two GetCallerIdentity attempts
STATUS_CONCURRENCY = 8
MAX_POD_EVENTS_PER_FAILURE = 20
RELIST_QUIET = 1.0  # seconds without relisted objects before checking what the relist did not show
RELIST_RETRY = 5.0


@dataclasses.dataclass(frozen=True)
class Indexes:
    """kopf's indexes, complete once any handler runs: the operator's starting picture."""

    pods: Iterable[facts.PodFacts]
    namespaces: Iterable[policy.NamespacePolicy]
    bindings: Iterable[facts.BindingFacts]
    proxies: Iterable[facts.ProxyFacts]
    tainted_nodes: Iterable[str]
    service_accounts: Iterable[facts.ServiceAccountFacts] = ()


_KIND_NAMES = {"pods": "pod", "bindings": "PodRoleBinding", "serviceaccounts": "ServiceAccount"}


def _ref(api_version: str, kind: str, namespace: str, name: str, uid: str) -> dict[str, str]:
    return {"apiVersion": api_version, "kind": kind, "namespace": namespace, "name": name, "uid": uid}


class Engine:
    def __init__(
        self,
        *,
        config: decide.Config,
        base: roles.BaseArn | None,
        cache: sts.CredentialCache,
        pusher_factory: Any,
        kube: kubes.Kube,
        clock: clocks.Clock,
        node_taint: str,
        manage_node_taint: bool,
        leadership: Any = None,
        identity: Any = None,
        own: world.OwnPods | None = None,
        reader: facts.Reader = facts.DEFAULT_READER,
        sa_keys: sa_keys.Source | None = None,
    ) -> None:
        self.reader = reader
        # The API server's service-account keys for the proxies (None: no container-credentials path).
        self.sa_keys = sa_keys
        self.world = world.World(config, base, own, reader.rules)
        self.cache = cache
        # ``async () -> (arn, account)``: the operator's own AWS identity (GetCallerIdentity), asked once
        # this replica leads; its account resolves role names when no base ARN is configured.
        self.identity = identity
        self.caller_arn: str | None = None
        self.identity_error: str | None = None
        self.kube = kube
        self.clock = clock
        self.node_taint = node_taint
        self.manage_node_taint = manage_node_taint
        self.leadership = leadership
        self.pusher: push.Pusher = pusher_factory(self._desired, self._credentials, self._synced, self._pending)
        self.tainted: set[str] = set()
        self.started = False
        # Where start() is, for /readyz: waiting for kopf's first handler call (the
        # initial listing), for leadership, for the first credentials, or done.
        self.phase: Phase = "listing"
        self._start_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fetching: set[str] = set()
        self._status_dirty: set[world.BindingKey] = set()
        self._status_wakeup = asyncio.Event()
        self._written: dict[world.BindingKey, dict[str, Any]] = {}
        self._conditions: dict[world.BindingKey, dict[str, Any]] = {}
        self._phases: dict[world.BindingKey, str] = {}
        self._owned_dirty: set[world.PodKey] = set()
        self._owned_wakeup = asyncio.Event()
        self._owned_created: dict[world.PodKey, str] = {}  # created, not seen back yet: pod uid
        self._owned_refused: dict[world.PodKey, tuple[str, str | None, str | None]] = {}  # 422: (pod uid, role, external id)
        self._emitted: dict[tuple[str, str], str] = {}  # (object uid, reason) -> message, to post each Event once
        self._relisted_at = 0.0  # when kopf last delivered an object of a relist
        self._default_refused: dict[str, str] = {}  # namespace -> why the cluster's default role does not apply there
        self._reconciling = False

    # --- lifecycle ------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def start(self, indexes: Indexes) -> None:
        """Once, at the first handler call: load the complete picture, fetch credentials, then push."""
        async with self._start_lock:
            if self.started:
                return
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
                self.pusher.set_proxy(proxy.node, proxy)
            self.tainted = set(indexes.tainted_nodes)
            if self.leadership is not None:
                self.phase = "standby"
                await self.leadership.wait_until_leader()
            # Leading from here on. Our own pods' entries first: they need no AWS, and
            # without them an operator on the pod network cannot reach AWS at all.
            self.phase = "identity"
            self.pusher.announce()
            if self.identity is not None:
                learning = self._spawn(self._learn_identity(), "identity")
                if self.world.base is None:
                    await asyncio.wait([learning], timeout=IDENTITY_TIMEOUT)
            self.phase = "warming-up"
            keys = self.world.used_keys()
            logger.info("starting with %d pods, %d bindings, %d proxies, %d credential sets to fetch",
                        len(self.world.pods), len(self.world.bindings), len(self.world.proxies), len(keys))
            # A new leader's first snapshots replace what the proxies hold: fetch
            # every credential set first, so that no pod loses its credentials
            # (and the service-account keys, which snapshots carry).
            fetches = [asyncio.ensure_future(self._fetch(key)) for key in keys]
            if self.sa_keys is not None:
                fetches.append(asyncio.ensure_future(self._first_keys(self.sa_keys)))
            if fetches:
                await asyncio.wait(fetches, timeout=WARMUP_TIMEOUT)
            self.started = True
            self.phase = "active"
            self.pusher.start()
            self._spawn(self.cache.run_refresher(self._in_use, self._refreshed, self._payers), "refresher")
            if self.sa_keys is not None:
                self._spawn(self.sa_keys.run(self.pusher.poke_all), "service-account-keys")
            self._spawn(self._status_loop(), "status-writer")
            self._spawn(self._owned_loop(), "owned-bindings")
            if self.leadership is not None:
                self._spawn(self.leadership.watch(), "leadership")
            self._status_dirty |= set(self.world.bindings)
            self._status_wakeup.set()
            self._owned_dirty |= {k for k, p in self.world.pods.items() if p.role is not None or self.world.bindings.get(k)}
            self._owned_wakeup.set()
            for key, decision in self.world.decisions.items():
                self._pod_events(key, decision)
            self._note_default_everywhere()

    @staticmethod
    async def _first_keys(source: sa_keys.Source) -> None:
        try:
            await source.refresh()
        except sa_keys.KeysError:
            pass  # the refresher says why, and retries

    async def _learn_identity(self) -> None:
        """GetCallerIdentity until it answers, with backoff; never fatal (liveness stays green), always said."""
        delay = 1.0
        while True:
            try:
                arn, account = await self.identity()
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
            self._note_default_everywhere()
            # Pods whose role name could not be resolved before now get their bindings.
            self._owned_dirty |= delta.pods
            self._owned_wakeup.set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pusher.close()

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
            self._owned_dirty.add(key)
            self._owned_wakeup.set()
        else:
            self._forget_events(meta.get("uid", ""))
            self._owned_refused.pop(key, None)

    def proxy_event(self, event_type: str | None, body: dict[str, Any], node_hint: str | None = None) -> None:
        proxy = None if event_type == "DELETED" else facts.proxy_facts(body)
        node = proxy.node if proxy else (body.get("spec", {}).get("nodeName") or node_hint)
        if not node:
            return
        current = self.world.proxies.get(node)
        if proxy is None and current is not None and current.pod_uid != body.get("metadata", {}).get("uid"):
            return  # an old proxy pod of this node went away; the current one stays
        if self.world.set_proxy(node, proxy):
            self.pusher.set_proxy(node, proxy)

    def namespace_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body.get("metadata", {}).get("name", "")
        if event_type == "DELETED":
            self._apply(self.world.delete_namespace(name))
            self._default_refused.pop(name, None)
        else:
            self._apply(self.world.set_namespace(facts.namespace_policy(body, self.reader)))
            if self.started:
                self._note_default(name)

    def service_account_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A ServiceAccount changed: with --irsa-service-accounts, its pods may gain or lose its role at once."""
        if not self.world.config.irsa:
            return
        meta = body.get("metadata", {})
        if event_type == "DELETED":
            self._apply(self.world.delete_service_account(meta.get("namespace", ""), meta.get("name", "")))
            self._forget_events(meta.get("uid", ""))
        else:
            self._apply(self.world.set_service_account(facts.service_account_facts(body)))

    def binding_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            delta = self.world.delete_binding(*key)
            self._written.pop(key, None)
            self._conditions.pop(key, None)
            if self._phases.pop(key, None) is not None:
                self._phase_gauge()
            self._forget_events(meta.get("uid", ""))
        else:
            binding = facts.binding_facts(body)
            delta = self.world.set_binding(binding)
            if binding.pod_owned:
                self._owned_created.pop(key, None)
            status = body.get("status") or {}
            if status.get("observedGeneration") != binding.generation:
                delta.bindings.add(key)
        self._apply(delta)
        # Pod-owned: recreate it if a user deleted it while the annotation stays; fix edited specs.
        if key in self.world.pods:
            self._owned_dirty.add(key)
            self._owned_wakeup.set()

    def node_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body.get("metadata", {}).get("name", "")
        if event_type != "DELETED" and facts.node_has_taint(body, self.node_taint):
            if name not in self.tainted:
                self.tainted.add(name)
                worker = self.pusher.workers.get(name)
                if worker is not None and worker.synced_once and self.started:
                    self._spawn(self._synced(name), f"untaint-{name}")
        else:
            self.tainted.discard(name)

    # --- relists: deletions no watch reported ------------------------------------------

    def relisted(self, kind: str) -> None:
        """kopf delivered an object of a (re)list of ``kind`` ("pods" or "bindings").

        kopf lists again whenever a watch cannot resume (410 Gone: its resource
        version expired, e.g. while the operator was cut off from a restarted
        API server) and reports only the objects that exist: an object deleted
        meanwhile never gets its DELETED event, and a pod's or binding's deletion
        is a revocation. So once the relist is over, whatever we hold that no
        longer exists is deleted here. Every kind is checked whichever relisted
        (a relist of a kind with no objects left delivers nothing at all),
        ServiceAccounts too, whose deletion takes their role away.
        """
        if not self.started:
            return
        self._relisted_at = time.monotonic()
        if not self._reconciling:
            self._reconciling = True
            self._spawn(self._reconcile(), "reconcile-after-relist")

    async def _reconcile(self) -> None:
        try:
            while (quiet := self._relisted_at + RELIST_QUIET - time.monotonic()) > 0:
                await asyncio.sleep(quiet)
            # ServiceAccounts only when they can hold roles (--irsa-service-accounts): listing them costs.
            for kind in ("pods", "bindings", *(("serviceaccounts",) if self.world.config.irsa else ())):
                while True:
                    try:
                        await self._drop_vanished(kind)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as error:  # the API server may be away again: keep trying
                        logger.warning("checking %s after a relist failed (%s: %s); retrying", kind, type(error).__name__, error)
                    await asyncio.sleep(RELIST_RETRY)
        finally:
            self._reconciling = False

    def _held(self, kind: str) -> dict[tuple[str, str], str]:
        if kind == "pods":
            return {key: pod.uid for key, pod in self.world.pods.items()}
        if kind == "serviceaccounts":
            return {key: account.uid for key, account in self.world.service_accounts.items()}
        return {key: binding.uid for key, binding in self.world.bindings.items()}

    async def _drop_vanished(self, kind: str) -> None:
        listed = await self.kube.list_uids(kind)
        suspects = [(key, uid) for key, uid in self._held(kind).items() if listed.get(key) != uid]
        for (namespace, name), uid in suspects:
            # Seen by the watch after the list was taken, perhaps: ask for it by name.
            if await self.kube.current_uid(kind, namespace, name) == uid:
                continue
            if self._held(kind).get((namespace, name)) != uid:
                continue  # the watch caught up meanwhile
            logger.warning("%s %s/%s (uid %s) was deleted while our watch was broken: revoking now",
                           _KIND_NAMES[kind], namespace, name, uid)
            if kind == "pods":
                pod = self.world.pods[(namespace, name)]
                body = {"metadata": {"namespace": namespace, "name": name, "uid": uid}, "spec": {"nodeName": pod.node}}
                self.pod_event("DELETED", body)
                proxy = self.world.proxies.get(pod.node or "")
                if proxy is not None and proxy.pod_uid == uid:
                    self.proxy_event("DELETED", body)
            elif kind == "serviceaccounts":
                self.service_account_event("DELETED", {"metadata": {"namespace": namespace, "name": name, "uid": uid}})
            else:
                self.binding_event("DELETED", {"metadata": {"namespace": namespace, "name": name, "uid": uid}})

    # --- consequences ----------------------------------------------------------------

    def _apply(self, delta: world.Delta) -> None:
        if not delta or not self.started:
            return
        for key in delta.keys_used:
            self._spawn(self._fetch(key), "fetch")
        ready_keys = {k for k in delta.keys_used if self.cache.usable(k) is not None}
        nodes = set(delta.nodes)
        for key in ready_keys:
            nodes |= self.world.nodes_using(key)
        self.pusher.poke(nodes)
        if delta.bindings:
            self._status_dirty |= delta.bindings
            self._status_wakeup.set()
        for pod_key in delta.pods:
            decision = self.world.decisions.get(pod_key)
            if decision is not None:
                self._pod_events(pod_key, decision)

    async def _fetch(self, key: str) -> None:
        grant = self.world.grants.get(key)
        if grant is None or key in self._fetching:
            return
        self._fetching.add(key)
        try:
            await self.cache.get(key, sts.AssumeRequest.for_grant(grant), self._payers(key))
        except sts.StsError as error:
            await self._refreshed(key, None, error)
        else:
            await self._refreshed(key, self.cache.usable(key), None)
        finally:
            self._fetching.discard(key)

    def _in_use(self, key: str) -> bool:
        return bool(self.world.key_users.get(key))

    def _payers(self, key: str) -> frozenset[str]:
        """The namespaces whose STS budgets the key's calls may spend: those of the pods using it."""
        return frozenset(namespace for namespace, _ in self.world.key_users.get(key, ()))

    async def _refreshed(self, key: str, credentials: sts.Credentials | None, error: sts.StsError | None) -> None:
        """New credentials go to every node that needs them; failures to statuses and Events."""
        if credentials is not None:
            self.pusher.poke(self.world.nodes_using(key))
        bindings = self.world.bindings_using(key)
        self._status_dirty |= bindings
        self._status_wakeup.set()
        if error is not None and self.cache.usable(key) is None:
            grant = self.world.grants.get(key)
            arn = grant.role.arn if grant else "?"
            message = f"AssumeRole {arn} failed: {error.code}: {error.message}; retried later"
            for count, pod_key in enumerate(sorted(self.world.key_users.get(key, ()))):
                if count >= MAX_POD_EVENTS_PER_FAILURE:
                    break
                pod = self.world.pods.get(pod_key)
                if pod is not None:
                    self._post_event(_ref("v1", "Pod", pod.namespace, pod.name, pod.uid), "Warning", "AssumeRoleFailed", message)

    def _desired(self, node: str) -> world.NodeDesired:
        return self.world.desired_for_node(node)

    def _pending(self, node: str) -> dict[str, wire.PendingPod]:
        """The node's pods granted a role and not yet given an IP by the API server, by uid.

        Their proxy may serve one of them by the IP the node's runtime gave it,
        checked against this uid, before the kubelet reports that IP.
        """
        pending = {}
        own = self.world.own_pods.get(node, set())
        for key, grant in self.world.node_pods.get(node, {}).items():
            pod = self.world.pods[key]
            if pod.ip is None and not pod.host_network and key not in own:
                pending[pod.uid] = wire.PendingPod(uid=pod.uid, namespace=pod.namespace, name=pod.name, role_key=grant.key)
        return pending

    def _credentials(self, key: str) -> wire.RoleCredentials | None:
        credentials = self.cache.usable(key)
        grant = self.world.grants.get(key)
        if credentials is None or grant is None:
            return None
        return wire.RoleCredentials(
            key=key,
            role_arn=grant.role.arn,
            role_name=grant.role.name,
            access_key_id=credentials.access_key_id,
            secret_access_key=credentials.secret_access_key,
            session_token=credentials.session_token,
            expiration=credentials.expiration,
            last_updated=credentials.issued,
        )

    async def _synced(self, node: str) -> None:
        """A proxy has its snapshot: its node may now run pods (lift the start-up taint)."""
        self.pusher._gauge()
        if not self.manage_node_taint or node not in self.tainted:
            return
        try:
            if await self.kube.remove_node_taint(node, self.node_taint):
                logger.info("node %s: proxy synced, start-up taint %s removed", node, self.node_taint)
            self.tainted.discard(node)
        except ApiException as error:
            logger.error("could not remove taint %s from node %s: HTTP %s %s", self.node_taint, node, error.status, error.reason)

    # --- Events ------------------------------------------------------------------------

    def _post_event(self, ref: dict[str, str], kind: str, reason: str, message: str) -> None:
        memory_key = (ref["uid"], reason)
        if self._emitted.get(memory_key) == message:
            return
        self._emitted[memory_key] = message
        self._spawn(self.kube.event(ref, kind, reason, message), "event")

    def _forget_events(self, uid: str) -> None:
        for memory_key in [k for k in self._emitted if k[0] == uid]:
            del self._emitted[memory_key]

    def _pod_events(self, key: world.PodKey, decision: decide.PodDecision) -> None:
        pod = self.world.pods.get(key)
        if pod is None:
            return
        ref = _ref("v1", "Pod", pod.namespace, pod.name, pod.uid)
        if decision.outcome in ("denied", "conflict", "error"):
            self._post_event(ref, "Warning", decision.reason, decision.message)
            account = self.world.service_accounts.get((pod.namespace, pod.service_account))
            if decision.source == "serviceaccount" and account is not None:
                # Where whoever annotated the ServiceAccount looks: kubectl describe serviceaccount.
                self._post_event(_ref("v1", "ServiceAccount", account.namespace, account.name, account.uid), "Warning",
                                 decision.reason, decision.message)
        elif decision.outcome == "granted":
            # A later failure of the same kind is news again.
            for reason in ("HostNetwork", "MirrorPod", "NamespaceNotPermitted", "RoleNotPermitted", "InvalidPermittedRegex",
                           "InvalidAllowedRoles", "ConflictingBindings", "InvalidRole", "AccountNotKnown"):
                self._emitted.pop((pod.uid, reason), None)
            conflict = self.world.ip_conflict(key)
            if conflict is not None:
                self._post_event(ref, "Warning", "IPConflict", conflict)
            else:
                self._emitted.pop((pod.uid, "IPConflict"), None)
            ignored = decide.session_name_ignored(pod, self.world.config)
            if ignored is not None:
                self._post_event(ref, "Normal", "SessionNameIgnored", ignored)
            token_only = decide.token_only(pod, self.world.config)
            if token_only is not None:
                self._post_event(ref, "Normal", "ContainerCredentialsOnly", token_only)

    # --- the cluster's default role ------------------------------------------------------------

    def _note_default(self, namespace: str) -> None:
        """Its pods get no Event for it (most would); the log says, when it changes, whether it applies there."""
        refusal = self.world.cluster_default_refusal(namespace)
        if refusal == self._default_refused.get(namespace):
            return
        if refusal is None:
            self._default_refused.pop(namespace, None)
            logger.info("namespace %s: the cluster's default role %s applies to its pods that get no other role",
                        namespace, self.world.config.default_role)
        else:
            self._default_refused[namespace] = refusal
            logger.info("namespace %s: the cluster's default role does not apply to its pods: %s", namespace, refusal)

    def _note_default_everywhere(self) -> None:
        """At start (once the account is known): one line for the whole cluster, then one per namespace that changes."""
        if self.world.config.default_role is None or self.world.base is None:
            return
        refusals = {n: r for n in self.world.namespaces if (r := self.world.cluster_default_refusal(n)) is not None}
        self._default_refused = refusals
        logger.info("the cluster's default role %s applies in %d namespace(s); not in %d, whose policy does not permit it%s",
                    self.world.config.default_role, len(self.world.namespaces) - len(refusals), len(refusals),
                    (": " + ", ".join(sorted(refusals)[:20]) + (" ..." if len(refusals) > 20 else "")) if refusals else "")

    # --- binding statuses --------------------------------------------------------------------

    def _status_of(self, key: world.BindingKey) -> tuple[decide.BindingStatus, facts.BindingFacts] | None:
        binding = self.world.bindings.get(key)
        if binding is None:
            return None
        decisions = self.world.binding_decisions(key)
        if binding.pod_owned:
            # A pod-owned binding speaks for its owner pod only.
            decisions = [(p, d) for p, d in decisions if p.uid == binding.owner_pod_uid]
        states = {d.grant.key: self.cache.state(d.grant.key) for _, d in decisions if d.grant is not None}
        contested = {p.key: why for p, _ in decisions if (why := self.world.ip_conflict(p.key)) is not None}
        return decide.binding_status(self.world.evals.get(key), decisions, states, contested), binding

    async def _status_loop(self) -> None:
        semaphore = asyncio.Semaphore(STATUS_CONCURRENCY)
        while True:
            await self._status_wakeup.wait()
            self._status_wakeup.clear()
            await asyncio.sleep(0.05)  # coalesce bursts
            batch, self._status_dirty = self._status_dirty, set()

            async def write(key: world.BindingKey) -> None:
                async with semaphore:
                    await self._write_status(key)

            await asyncio.gather(*(write(key) for key in batch))

    async def _write_status(self, key: world.BindingKey) -> None:
        computed = self._status_of(key)
        if computed is None:
            return
        status, binding = computed
        ready = "True" if status.phase == "Bound" else "False"
        previous = self._conditions.get(key)
        transition = previous["lastTransitionTime"] if previous and previous["status"] == ready else wire.rfc3339(self.clock.now())
        condition = {
            "type": "Ready", "status": ready, "reason": status.reason, "message": status.message,
            "lastTransitionTime": transition, "observedGeneration": binding.generation,
        }
        body: dict[str, Any] = {
            "phase": status.phase,
            "roleArn": status.role_arn,
            "pods": status.pods,
            "expiration": status.expiration,
            "message": status.message,
            "observedGeneration": binding.generation,
            "conditions": [condition],
        }
        comparable = {k: v for k, v in body.items() if k != "conditions"} | {"reason": status.reason}
        if self._written.get(key) == comparable:
            return
        try:
            await self.kube.patch_binding_status(binding.namespace, binding.name, body)
        except ApiException as error:
            if error.status != 404:
                logger.warning("status of binding %s/%s not written: HTTP %s", *key, error.status)
                self._status_dirty.add(key)
                self._status_wakeup.set()
                await asyncio.sleep(1.0)
            return
        old_phase = self._phases.get(key)
        self._written[key] = comparable
        self._conditions[key] = condition
        self._phases[key] = status.phase
        self._phase_gauge()
        ref = _ref(facts.API_VERSION, facts.KIND, binding.namespace, binding.name, binding.uid)
        if status.phase in ("Denied", "Conflict", "Error"):
            self._post_event(ref, "Warning", status.reason, status.message)
        elif status.phase == "Bound" and old_phase != "Bound":
            # No Event for success (5,000 pods would mean 5,000 Events); a
            # failure after a recovery is news again.
            for reason in list(self._emitted):
                if reason[0] == binding.uid:
                    del self._emitted[reason]

    def _phase_gauge(self) -> None:
        counts = collections.Counter(self._phases.values())
        for phase in ("Pending", "Bound", "Denied", "Conflict", "Error"):
            _metrics.BINDINGS.labels(phase).set(counts.get(phase, 0))

    # --- pod-owned bindings ---------------------------------------------------------------------

    async def _owned_loop(self) -> None:
        semaphore = asyncio.Semaphore(STATUS_CONCURRENCY)
        while True:
            await self._owned_wakeup.wait()
            self._owned_wakeup.clear()
            batch, self._owned_dirty = self._owned_dirty, set()

            async def sync(key: world.PodKey) -> None:
                async with semaphore:
                    try:
                        await self._sync_owned(key)
                    except ApiException as error:
                        logger.warning("pod-owned binding %s/%s: HTTP %s %s; retrying", *key, error.status, error.reason)
                        await asyncio.sleep(1.0)
                        self._owned_dirty.add(key)
                        self._owned_wakeup.set()

            await asyncio.gather(*(sync(key) for key in batch))

    async def _sync_owned(self, key: world.PodKey) -> None:
        pod = self.world.pods.get(key)
        binding = self.world.bindings.get(key)
        if pod is None:
            return  # the garbage collector deletes bindings of deleted pods
        owned = binding if binding is not None and binding.owner_pod_uid == pod.uid else None
        if pod.role is None:
            if owned is not None:
                logger.info("pod %s/%s lost its role annotation: deleting its binding", *key)
                await self.kube.delete_binding(pod.namespace, pod.name, owned.uid)
            return
        if binding is not None and owned is None:
            if binding.pod_owned:  # owned by an earlier pod of that name: replace it
                await self.kube.delete_binding(pod.namespace, pod.name, binding.uid)
            else:
                self._post_event(_ref("v1", "Pod", pod.namespace, pod.name, pod.uid), "Warning", "BindingNameTaken",
                                 f"a PodRoleBinding named {pod.name} already exists and is not this pod's; "
                                 "the pod's role annotation still applies, its status shows on the pod's Events only")
            return
        # A role the operator refuses (a "..", another account...) still gets its binding, whose status says why;
        # only what the CRD's own validation refuses (HTTP 422) stays on the pod's Events.
        wanted = (pod.uid, pod.role, pod.external_id)
        if self._owned_refused.get(key) == wanted:
            return  # retrying cannot help (and would spin): the annotations must change
        try:
            if owned is None:
                if self._owned_created.get(key) == pod.uid:
                    return
                try:
                    await self.kube.create_owned_binding(pod)
                except ApiException as error:
                    if error.status != 409:
                        raise
                self._owned_created[key] = pod.uid
            elif owned.role != pod.role or owned.external_id != pod.external_id:
                await self.kube.patch_binding_spec(pod.namespace, pod.name, {"role": pod.role, "externalId": pod.external_id})
        except ApiException as error:
            if error.status != 422:
                raise
            self._owned_refused[key] = wanted
            logger.warning("pod %s/%s: its PodRoleBinding was refused by the API server: %s", *key, error.reason)
