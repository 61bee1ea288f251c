"""The operator's model of the cluster and what every node's proxy should hold.

Fed with facts (pods, namespaces, bindings, ServiceAccounts, proxies), it
keeps each pod's decision up to date incrementally and answers, per node,
which pod entries and which credential keys that node's proxy must hold.
Every mutation returns a :class:`Delta`: the nodes whose desired state
changed, the bindings whose status may have changed, the pods whose decision
changed, the keys that gained their first user (a key that lost its last
one is dropped by the credential cache's refresher, which asks who uses it).
"""

from __future__ import annotations

import collections
import dataclasses

from podiam_operator._core import decide, facts, policy, roles

PodKey = tuple[str, str]  # (namespace, name)
BindingKey = tuple[str, str]


@dataclasses.dataclass
class Delta:
    nodes: set[str] = dataclasses.field(default_factory=set)
    bindings: set[BindingKey] = dataclasses.field(default_factory=set)
    pods: set[PodKey] = dataclasses.field(default_factory=set)  # decision changed (Events, pod-owned bindings)
    keys_used: set[str] = dataclasses.field(default_factory=set)  # gained a user

    def __ior__(self, other: Delta) -> Delta:
        self.nodes |= other.nodes
        self.bindings |= other.bindings
        self.pods |= other.pods
        self.keys_used |= other.keys_used
        return self

    def __bool__(self) -> bool:
        return bool(self.nodes or self.bindings or self.pods or self.keys_used)


@dataclasses.dataclass(frozen=True, slots=True)
class PodEntryPlan:
    ip: str
    uid: str
    namespace: str
    name: str
    key: str | None  # None: a node-identity entry (one of the operator's own pods)

    @property
    def node_identity(self) -> bool:
        return self.key is None


@dataclasses.dataclass(frozen=True)
class OwnPods:
    """Which pods are the operator's own replicas: its namespace and ServiceAccount.

    Not labels: anyone who can create a pod can copy them. Tenants cannot
    create pods in the operator's namespace, let alone run them as its
    ServiceAccount, so these pods are the operator itself. Never a mirror
    pod: a node's kubelet makes those from its own manifests, any namespace
    and ServiceAccount it likes.
    """

    namespace: str
    service_account: str

    def __contains__(self, pod: facts.PodFacts) -> bool:
        return pod.namespace == self.namespace and pod.service_account == self.service_account and not pod.mirror


@dataclasses.dataclass(frozen=True, slots=True)
class TokenOnlyPlan:
    """A granted hostNetwork pod: served by its token on the container-credentials path, never by IP."""

    uid: str
    namespace: str
    name: str
    key: str


@dataclasses.dataclass(frozen=True)
class NodeDesired:
    pods: dict[str, PodEntryPlan]  # by pod uid: pods with an IP
    keys: frozenset[str]  # every key a pod scheduled here needs (before it has an IP, too)
    token_only: dict[str, TokenOnlyPlan] = dataclasses.field(default_factory=dict)  # by pod uid


class World:
    def __init__(self, config: decide.Config, base: roles.BaseArn | None = None, own: OwnPods | None = None,
                 rules: policy.Rules = policy.Rules()) -> None:
        self.config = config
        self.base = base
        # The operator's own pods get node-identity entries on their node's proxy (None: none do).
        self.own = own
        self.own_pods: dict[str, set[PodKey]] = collections.defaultdict(set)  # node -> own pods alive there
        self._own_placed: dict[PodKey, str] = {}
        self.pods: dict[PodKey, facts.PodFacts] = {}
        self.pods_by_ns: dict[str, set[str]] = collections.defaultdict(set)
        self.namespaces: dict[str, policy.NamespacePolicy] = {}
        # Only ServiceAccounts that name a role (eks.amazonaws.com/role-arn): the others decide nothing.
        self.service_accounts: dict[tuple[str, str], facts.ServiceAccountFacts] = {}
        self.rules = rules
        self.bindings: dict[BindingKey, facts.BindingFacts] = {}
        self.bindings_by_ns: dict[str, set[str]] = collections.defaultdict(set)
        # The users' own bindings only: a pod's decision matches those, never the pod-owned ones (one per
        # annotated pod), so a namespace of thousands of annotated pods costs each pod's decision nothing.
        self.user_bindings_by_ns: dict[str, set[str]] = collections.defaultdict(set)
        self.evals: dict[BindingKey, decide.BindingEval] = {}
        self.decisions: dict[PodKey, decide.PodDecision] = {}
        self.node_pods: dict[str, dict[PodKey, decide.Grant]] = collections.defaultdict(dict)  # granted, alive, scheduled
        self.key_users: dict[str, set[PodKey]] = collections.defaultdict(set)  # granted, alive (scheduled or not)
        self.grants: dict[str, decide.Grant] = {}
        self.binding_pods: dict[BindingKey, set[PodKey]] = collections.defaultdict(set)
        self.proxies: dict[str, facts.ProxyFacts] = {}
        self._placed: dict[PodKey, tuple[str | None, str | None]] = {}  # (node, key) last accounted
        # Every live pod's (node, IP), whatever its role: a granted pod's IP that
        # another live pod also claims (a role-less one included) is served to nobody.
        self.ip_claims: dict[tuple[str, str], set[PodKey]] = collections.defaultdict(set)
        self._claimed: dict[PodKey, tuple[str, str]] = {}

    # --- queries -------------------------------------------------------------

    def namespace_policy(self, namespace: str) -> policy.NamespacePolicy:
        return self.namespaces.get(namespace) or policy.unknown_namespace(namespace, self.rules)

    def desired_for_node(self, node: str) -> NodeDesired:
        pods: dict[str, PodEntryPlan] = {}
        by_ip: dict[str, list[PodEntryPlan]] = collections.defaultdict(list)
        keys: set[str] = set()
        own = self.own_pods.get(node, set())
        for pod_key in own:
            pod = self.pods[pod_key]
            if pod.ip:
                by_ip[pod.ip].append(PodEntryPlan(pod.ip, pod.uid, pod.namespace, pod.name, None))
        token_only: dict[str, TokenOnlyPlan] = {}
        for pod_key, grant in self.node_pods.get(node, {}).items():
            pod = self.pods[pod_key]
            keys.add(grant.key)
            if pod.host_network:  # the node's IP: never an entry by IP
                token_only[pod.uid] = TokenOnlyPlan(pod.uid, pod.namespace, pod.name, grant.key)
            elif pod.ip and pod_key not in own:  # the operator's own pod is the operator, whatever its annotations
                by_ip[pod.ip].append(PodEntryPlan(pod.ip, pod.uid, pod.namespace, pod.name, grant.key))
        for ip, plans in by_ip.items():
            # Two live pods claiming one IP: one of them is stale and we cannot
            # tell which, so neither is served until the stale one is gone. The
            # other claim may come from a pod without a role: it must not get
            # this one's credentials either.
            if len(plans) == 1 and len(self.ip_claims.get((node, ip), ())) <= 1:
                pods[plans[0].uid] = plans[0]
        return NodeDesired(pods=pods, keys=frozenset(keys), token_only=token_only)

    def nodes_using(self, key: str) -> set[str]:
        return {self.pods[p].node for p in self.key_users.get(key, ()) if self.pods[p].node}  # type: ignore[misc]

    def bindings_using(self, key: str) -> set[BindingKey]:
        found: set[BindingKey] = set()
        for pod_key in self.key_users.get(key, ()):
            found.update((pod_key[0], name) for name in self.decisions[pod_key].bindings)
        return found

    def used_keys(self) -> set[str]:
        return {key for key, users in self.key_users.items() if users}

    def binding_decisions(self, key: BindingKey) -> list[tuple[facts.PodFacts, decide.PodDecision]]:
        return [(self.pods[p], self.decisions[p]) for p in sorted(self.binding_pods.get(key, ())) if p in self.pods]

    def ip_conflict(self, key: PodKey) -> str | None:
        """Why the pod is not served although granted: another live pod claims its IP on its node (None: it does not)."""
        claim = self._claimed.get(key)
        rivals = sorted(self.ip_claims.get(claim, set()) - {key}) if claim is not None else []
        if not rivals:
            return None
        assert claim is not None
        names = ", ".join(f"{namespace}/{name}" for namespace, name in rivals[:3]) + (" ..." if len(rivals) > 3 else "")
        return (f"pod {key[1]}: its IP {claim[1]} on node {claim[0]} is also claimed by live pod {names}, so neither is served "
                "until one of them is gone (an IP reused while the API server still shows its previous pod)")

    def cluster_default_refusal(self, namespace: str) -> str | None:
        """Why the cluster's default role does not apply in the namespace (None: it does, or there is none yet)."""
        written, base = self.config.default_role, self.base
        if written is None or base is None:
            return None
        verdict = self.namespace_policy(namespace).check(roles.resolve(written, base), base)
        return None if verdict.allowed else verdict.message

    def owned_binding_for(self, pod: facts.PodFacts) -> facts.BindingFacts | None:
        binding = self.bindings.get((pod.namespace, pod.name))
        return binding if binding is not None and binding.owner_pod_uid == pod.uid else None

    # --- mutations -------------------------------------------------------------

    def set_base(self, base: roles.BaseArn | None) -> Delta:
        self.base = base
        delta = Delta()
        for namespace in set(self.namespaces) | set(self.pods_by_ns) | set(self.bindings_by_ns):
            delta |= self._recompute_namespace(namespace)
        return delta

    def set_pod(self, pod: facts.PodFacts) -> Delta:
        old = self.pods.get(pod.key)
        if old == pod:
            return Delta()
        delta = Delta()
        if old is not None and old.uid != pod.uid:
            delta |= self.delete_pod(pod.namespace, pod.name)  # a new pod under an old name
            old = None
        self.pods[pod.key] = pod
        self.pods_by_ns[pod.namespace].add(pod.name)
        delta |= self._recompute_pod(pod.key)
        delta.nodes |= self._place_own(pod.key)
        if old is None or old.ip != pod.ip or old.node != pod.node:
            delta.nodes |= {n for n in (pod.node, old.node if old else None) if n and self._served(n, pod.key)}
        delta |= self._claim(pod.key, pod)
        return delta

    def delete_pod(self, namespace: str, name: str) -> Delta:
        key = (namespace, name)
        if key not in self.pods:
            return Delta()
        delta = self._unplace(key)
        delta |= self._claim(key, None)
        delta.nodes |= self._place_own(key, gone=True)
        decision = self.decisions.pop(key, decide.NONE)
        for binding in decision.bindings:
            self.binding_pods[(namespace, binding)].discard(key)
            delta.bindings.add((namespace, binding))
        del self.pods[key]
        self.pods_by_ns[namespace].discard(name)
        delta.pods.add(key)
        return delta

    def set_namespace(self, namespace: policy.NamespacePolicy) -> Delta:
        if self.namespaces.get(namespace.namespace) == namespace:
            return Delta()
        self.namespaces[namespace.namespace] = namespace
        return self._recompute_namespace(namespace.namespace)

    def delete_namespace(self, name: str) -> Delta:
        if self.namespaces.pop(name, None) is None:
            return Delta()
        return self._recompute_namespace(name)

    def set_service_account(self, account: facts.ServiceAccountFacts) -> Delta:
        """A ServiceAccount's role changed (or it came or went: ``role`` None); its pods decide again."""
        old = self.service_accounts.get(account.key)
        if old == account or (old is None and account.role is None):
            return Delta()
        if account.role is None:
            del self.service_accounts[account.key]
        else:
            self.service_accounts[account.key] = account
        namespace, name = account.key
        running_as = {p for p in self.pods_by_ns.get(namespace, ()) if self.pods[(namespace, p)].service_account == name}
        return self._recompute_pods(running_as, namespace)

    def delete_service_account(self, namespace: str, name: str) -> Delta:
        return self.set_service_account(facts.ServiceAccountFacts(namespace, name, "", None))

    def set_binding(self, binding: facts.BindingFacts) -> Delta:
        old = self.bindings.get(binding.key)
        if old == binding:
            return Delta()
        self.bindings[binding.key] = binding
        self.bindings_by_ns[binding.namespace].add(binding.name)
        if binding.pod_owned:
            self.user_bindings_by_ns[binding.namespace].discard(binding.name)
        else:
            self.user_bindings_by_ns[binding.namespace].add(binding.name)
        self.evals[binding.key] = decide.evaluate_binding(binding, self.namespace_policy(binding.namespace), self.base)
        delta = Delta(bindings={binding.key})
        if not binding.pod_owned or (old is not None and not old.pod_owned):
            delta |= self._recompute_pods(self.pods_by_ns.get(binding.namespace, set()), binding.namespace)
        return delta

    def delete_binding(self, namespace: str, name: str) -> Delta:
        old = self.bindings.pop((namespace, name), None)
        if old is None:
            return Delta()
        self.bindings_by_ns[namespace].discard(name)
        self.user_bindings_by_ns[namespace].discard(name)
        self.evals.pop((namespace, name), None)
        delta = Delta(bindings={(namespace, name)})
        if not old.pod_owned:
            delta |= self._recompute_pods(self.pods_by_ns.get(namespace, set()), namespace)
        return delta

    def set_proxy(self, node: str, proxy: facts.ProxyFacts | None) -> bool:
        """Returns whether anything changed."""
        if proxy is None:
            return self.proxies.pop(node, None) is not None
        changed = self.proxies.get(node) != proxy
        self.proxies[node] = proxy
        return changed

    # --- internals --------------------------------------------------------------

    def _recompute_namespace(self, namespace: str) -> Delta:
        delta = Delta()
        ns_policy = self.namespace_policy(namespace)
        for name in self.bindings_by_ns.get(namespace, set()):
            key = (namespace, name)
            self.evals[key] = decide.evaluate_binding(self.bindings[key], ns_policy, self.base)
            delta.bindings.add(key)
        delta |= self._recompute_pods(self.pods_by_ns.get(namespace, set()), namespace)
        return delta

    def _recompute_pods(self, names: set[str], namespace: str) -> Delta:
        delta = Delta()
        for name in list(names):
            delta |= self._recompute_pod((namespace, name))
        return delta

    def _recompute_pod(self, key: PodKey) -> Delta:
        pod = self.pods[key]
        namespace = key[0]
        evals = [self.evals[(namespace, n)] for n in self.user_bindings_by_ns.get(namespace, ()) if (namespace, n) in self.evals]
        account = self.service_accounts.get((namespace, pod.service_account))
        decision = decide.decide_pod(pod, self.namespace_policy(namespace), evals, self.base, self.config, account)
        old = self.decisions.get(key, decide.NONE)
        delta = Delta()
        if decision != old:
            self.decisions[key] = decision
            delta.pods.add(key)
            for name in set(old.bindings) - set(decision.bindings):
                self.binding_pods[(namespace, name)].discard(key)
            for name in decision.bindings:
                self.binding_pods[(namespace, name)].add(key)
            delta.bindings.update((namespace, name) for name in set(old.bindings) | set(decision.bindings))
        delta |= self._place(key)
        return delta

    def _claim(self, key: PodKey, pod: facts.PodFacts | None) -> Delta:
        """Account the pod's claim on its (node, IP).

        The Delta: the nodes where a served pod's IP got or lost a rival
        claim, and the granted pods on either IP (and their bindings), whose
        being served may have changed with it.
        """
        wanted = (pod.node, pod.ip) if pod is not None and pod.node and pod.ip and pod.alive and not pod.host_network else None
        old = self._claimed.get(key)
        if old == wanted:
            return Delta()
        if old is not None:
            claims = self.ip_claims[old]
            claims.discard(key)
            if not claims:
                del self.ip_claims[old]
            del self._claimed[key]
        if wanted is not None:
            self.ip_claims[wanted].add(key)
            self._claimed[key] = wanted
        delta = Delta()
        for node, ip in (c for c in (old, wanted) if c is not None):
            claims = self.ip_claims.get((node, ip), set())
            if any(self.pods[p].ip == ip for p in claims if self._served(node, p)):
                delta.nodes.add(node)
            for holder in claims | {key}:
                decision = self.decisions.get(holder)
                if decision is not None and decision.outcome == "granted":
                    delta.pods.add(holder)
                    delta.bindings.update((holder[0], name) for name in decision.bindings)
        return delta

    def _served(self, node: str, key: PodKey) -> bool:
        """Does the pod have (or want) an entry on this node's proxy?"""
        return key in self.node_pods.get(node, {}) or key in self.own_pods.get(node, ())

    def _place_own(self, key: PodKey, gone: bool = False) -> set[str]:
        """Account one of the operator's own pods under its node; the nodes whose entries change."""
        pod = None if gone else self.pods.get(key)
        wanted = pod.node if (pod is not None and self.own is not None and pod in self.own and pod.alive
                              and not pod.host_network and pod.node) else None  # host network: the node's IMDS directly
        had = self._own_placed.get(key)
        if had == wanted:
            return set()
        if had is not None:
            self.own_pods[had].discard(key)
            del self._own_placed[key]
        if wanted is not None:
            self.own_pods[wanted].add(key)
            self._own_placed[key] = wanted
        return {n for n in (had, wanted) if n is not None}

    def _place(self, key: PodKey) -> Delta:
        """Account the pod under its node and key according to its decision."""
        pod, decision = self.pods[key], self.decisions.get(key, decide.NONE)
        grant = decision.grant if decision.outcome == "granted" else None
        wanted = (pod.node, grant.key if grant else None)
        if self._placed.get(key, (None, None)) == wanted and (not grant or not pod.node or self.node_pods[pod.node].get(key) == grant):
            return Delta()
        delta = self._unplace(key)
        if grant is not None:
            self.grants[grant.key] = grant
            if not self.key_users[grant.key]:
                delta.keys_used.add(grant.key)
            self.key_users[grant.key].add(key)
            if pod.node:
                self.node_pods[pod.node][key] = grant
                delta.nodes.add(pod.node)
        self._placed[key] = wanted
        return delta

    def _unplace(self, key: PodKey) -> Delta:
        delta = Delta()
        node, grant_key = self._placed.pop(key, (None, None))
        if node is not None and self.node_pods.get(node, {}).pop(key, None) is not None:
            delta.nodes.add(node)
        if grant_key is not None:
            users = self.key_users.get(grant_key)
            if users is not None:
                users.discard(key)
                if not users:
                    del self.key_users[grant_key]
                    self.grants.pop(grant_key, None)
        return delta
