"""Which role a pod gets, or why it gets none; and what a binding's status says.

Pure functions over facts: the world model calls them, the handlers never do.

Where a pod's role comes from, highest first; the first level that names a
role decides, and every level goes through the namespace policy:

1. explicit: the pod's role annotation and the PodRoleBindings selecting
   it (by label, by ServiceAccount or both); two of them naming different
   roles (or the same role with different settings) is a Conflict;
2. its ServiceAccount's ``eks.amazonaws.com/role-arn`` (IRSA's annotation,
   with ``Config.irsa``);
3. the namespace's default role (``podiam.io/default-role``);
4. the cluster's default role (``Config.default_role``, kube2iam's
   ``--default-role``).

A default (3, 4) never applies to a pod that could not be served anyway
(hostNetwork, mirror pods), and the cluster's default only where the
namespace policy permits it: elsewhere the pod gets nothing, without an
Event (a fallback most namespaces refuse would otherwise post one per pod).
With ``Config.container_credentials`` a hostNetwork pod that names a role
(levels 1 and 2) is granted it, on the container-credentials path only;
defaults still pass such pods by (node agents on the host network should
not start holding a namespace's role by surprise).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Literal

from podiam_operator._core import facts, policy, roles, selectors, tags
from podiam_operator._core.reasons import Reason

Outcome = Literal["none", "granted", "denied", "conflict", "error"]
Source = Literal["", "explicit", "serviceaccount", "namespace-default", "cluster-default"]
# STS: a session assumed with another role's credentials (role chaining) lasts at most an hour.
CHAINED_MAX_DURATION = 3600


@dataclasses.dataclass(frozen=True)
class Config:
    """What decisions depend on besides the facts: the operator's settings."""

    default_duration: int = 3600
    session_name: str = "podiam"  # of shared sessions
    per_pod: bool = False
    allow_mirror_pods: bool = False
    default_role: str | None = None  # the cluster's default role (name or ARN)
    irsa: bool = False  # honour ServiceAccounts' eks.amazonaws.com/role-arn
    cluster_name: str | None = None  # the eks-cluster-name session tag
    # hostNetwork pods are served on the container-credentials path (their token names them, their IP cannot).
    container_credentials: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """One credential set to obtain from STS, identified by ``key``."""

    key: str
    role: roles.RoleRef
    external_id: str | None
    duration: int
    session_name: str
    tags: tuple[tuple[str, str], ...] = ()
    via: roles.RoleRef | None = None  # an intermediate role, assumed first (a binding's spec.intermediateRole)


@dataclasses.dataclass(frozen=True, slots=True)
class BindingEval:
    """A binding on its own: its roles, its selection, whether the namespace permits it."""

    binding: facts.BindingFacts
    role: roles.RoleRef | None = None
    selector: selectors.Selector | None = None
    error: str | None = None  # the spec is unusable (phase Error)
    error_reason: Reason = Reason.INVALID_SPEC
    verdict: policy.Verdict | None = None  # None when error is set
    intermediate: roles.RoleRef | None = None
    tags: tuple[tuple[str, str], ...] = ()  # spec.sessionTags, checked

    @property
    def usable(self) -> bool:
        return self.error is None and not self.binding.deleting

    def selects(self, pod: facts.PodFacts) -> bool:
        """Its ServiceAccount (if it names one) and its podSelector (if it has one) both match the pod."""
        if self.binding.service_account is not None and pod.service_account != self.binding.service_account:
            return False
        return self.selector is None or self.selector.matches(pod.label_map)


def evaluate_binding(binding: facts.BindingFacts, namespace: policy.NamespacePolicy, base: roles.BaseArn | None) -> BindingEval:
    if binding.role is None:
        return BindingEval(binding, error="spec.role is missing")
    selector = None
    if not binding.pod_owned:
        if binding.pod_selector is None and binding.service_account is None:
            return BindingEval(
                binding,
                error="spec.podSelector or spec.serviceAccountName is needed: a binding selects pods by label, by "
                "ServiceAccount or both (bindings without either are made by the operator for annotated pods)",
            )
        if binding.pod_selector is not None:
            try:
                selector = selectors.parse(binding.pod_selector)
            except selectors.SelectorError as error:
                return BindingEval(binding, error=f"invalid podSelector: {error}")
    try:
        role = roles.resolve(binding.role, base)
    except roles.RoleError as error:
        return BindingEval(binding, error=f"spec.role: {error}", error_reason=Reason.INVALID_ROLE)
    intermediate = None
    if binding.intermediate_role is not None:
        try:
            intermediate = roles.resolve(binding.intermediate_role, base)
        except roles.RoleError as error:
            return BindingEval(binding, error=f"spec.intermediateRole: {error}", error_reason=Reason.INVALID_ROLE)
        if binding.session_duration is not None and binding.session_duration > CHAINED_MAX_DURATION:
            return BindingEval(binding, error=f"spec.sessionDuration {binding.session_duration} is longer than STS allows a "
                               f"session assumed through spec.intermediateRole (role chaining: {CHAINED_MAX_DURATION} seconds)")
    try:
        extra = tags.binding_tags(binding.session_tags)
    except tags.TagError as error:
        return BindingEval(binding, error=str(error), error_reason=error.reason)
    verdict = _permitted(namespace, role, intermediate, base)
    return BindingEval(binding, role=role, selector=selector, verdict=verdict, intermediate=intermediate, tags=extra)


def _permitted(namespace: policy.NamespacePolicy, role: roles.RoleRef, via: roles.RoleRef | None,
               base: roles.BaseArn | None) -> policy.Verdict:
    """The namespace policy's verdict on the role and on the intermediate role it is assumed through: both must pass."""
    verdict = namespace.check(role, base)
    if not verdict.allowed or via is None:
        return verdict
    through = namespace.check(via, base)
    if through.allowed:
        return verdict
    return policy.Verdict(False, through.reason, f"spec.intermediateRole: {through.message}")


@dataclasses.dataclass(frozen=True, slots=True)
class PodDecision:
    outcome: Outcome
    grant: Grant | None = None
    bindings: tuple[str, ...] = ()  # names of every binding that applies to the pod
    reason: Reason | Literal[""] = ""
    message: str = ""
    source: Source = ""  # the level the role came from (when one did)


NONE = PodDecision("none")


@dataclasses.dataclass(frozen=True)
class _Candidate:
    binding: str
    role: roles.RoleRef
    external_id: str | None
    duration: int | None
    via: roles.RoleRef | None = None
    tags: tuple[tuple[str, str], ...] = ()
    tags_off: bool = False

    @property
    def settings(self) -> tuple[object, ...]:
        """What must agree between two sources at one level for them not to conflict."""
        return (self.role.arn, self.external_id, self.via.arn if self.via else None, self.tags, self.tags_off)

    def describe(self) -> str:
        extras = [f"through {self.via.arn}" if self.via else "", "with an external id" if self.external_id else "",
                  "session tags off" if self.tags_off else "", f"session tags {dict(self.tags)}" if self.tags else ""]
        return f"{self.binding} -> {self.role.arn}" + "".join(f" ({extra})" for extra in extras if extra)


def _session(pod: facts.PodFacts, config: Config, candidate: _Candidate) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The session name and tags of the pod's credentials.

    Shared sessions serve every pod on the role, of every namespace: no pod
    names them (a name per pod would also be an AssumeRole per name). A
    per-pod session's name is ``<namespace>.<the annotation, or the pod's
    name>``: a namespace name holds no ".", so no pod of another namespace
    can take a name that starts like this one (in CloudTrail, or in a
    resource policy matching ``assumed-role/<role>/<namespace>.*``).
    """
    session_tags = tags.for_session(
        namespace=pod.namespace, pod_name=pod.name, pod_uid=pod.uid, service_account=pod.service_account,
        per_pod=config.per_pod, cluster_name=config.cluster_name, extra=candidate.tags, disabled=candidate.tags_off,
    )
    if config.per_pod:
        return roles.sanitize_session_name(f"{pod.namespace}.{pod.session_name or pod.name}"), session_tags
    return config.session_name, session_tags


def token_only(pod: facts.PodFacts, config: Config) -> str | None:
    """What to tell a granted hostNetwork pod: it is served on the container-credentials path only (None: not such a pod)."""
    if not (pod.host_network and config.container_credentials):
        return None
    return (f"pod {pod.name} uses hostNetwork: it shares the node's IP, so it is served on the container-credentials "
            "path only (http://169.254.170.23/v1/credentials with its projected ServiceAccount token: "
            "AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE); its 169.254.169.254 is the "
            "node's own metadata service")


def session_name_ignored(pod: facts.PodFacts, config: Config) -> str | None:
    """What to tell a pod whose session-name annotation has no effect (shared sessions), or None."""
    if pod.session_name is None or config.per_pod:
        return None
    return (f"{facts.SESSION_NAME_ANNOTATION} is ignored: this operator uses shared sessions (one per role, for every pod "
            f"using it), named {config.session_name!r} by the operator; only per-pod sessions take a name from the pod")


def decide_pod(
    pod: facts.PodFacts,
    namespace: policy.NamespacePolicy,
    bindings: list[BindingEval],
    base: roles.BaseArn | None,
    config: Config,
    service_account: facts.ServiceAccountFacts | None = None,
) -> PodDecision:
    """The pod's role from the first level (see the module's docstring) that names one."""
    if pod.finished:
        return NONE
    explicit = _explicit(pod, bindings, base)
    if isinstance(explicit, PodDecision):
        return explicit
    if explicit:
        return _decide_explicit(pod, explicit, namespace, base, config)
    return _decide_fallback(pod, namespace, base, config, service_account)


def _explicit(pod: facts.PodFacts, bindings: list[BindingEval], base: roles.BaseArn | None) -> list[_Candidate] | PodDecision:
    """The pod's annotation and the user bindings selecting it; an error decision if the annotation is unusable."""
    candidates: list[_Candidate] = []
    if pod.role is not None:
        try:
            role = roles.resolve(pod.role, base)
        except roles.RoleError as error:
            return PodDecision("error", bindings=(pod.name,), reason=Reason.INVALID_ROLE, message=f"{facts.ROLE_ANNOTATION}: {error}",
                               source="explicit")
        if pod.external_id is not None:
            try:
                roles.check_external_id(pod.external_id)
            except roles.RoleError as error:
                return PodDecision("error", bindings=(pod.name,), reason=Reason.INVALID_EXTERNAL_ID,
                                   message=f"{facts.EXTERNAL_ID_ANNOTATION}: {error}", source="explicit")
        candidates.append(_Candidate(pod.name, role, pod.external_id, None))  # the pod-owned binding is named after the pod
    for evaluation in bindings:
        binding = evaluation.binding
        if binding.pod_owned or not evaluation.usable or evaluation.role is None or not evaluation.selects(pod):
            continue
        candidates.append(_Candidate(binding.name, evaluation.role, binding.external_id, binding.session_duration,
                                     evaluation.intermediate, evaluation.tags, binding.disable_session_tags))
    return candidates


def _unservable(pod: facts.PodFacts, config: Config, names: tuple[str, ...], source: Source) -> PodDecision | None:
    """Refusals that hold whatever the role: a mirror pod, or a pod on the host network."""
    if pod.mirror and not config.allow_mirror_pods:
        return PodDecision(
            "denied",
            bindings=names,
            reason=Reason.MIRROR_POD,
            message=f"pod {pod.name} is a mirror pod ({facts.MIRROR_ANNOTATION}): the kubelet of node {pod.node} made it from "
            "a static manifest, not a user through the API, so a compromised node could give it any role; no role is served "
            "(the operator's --allow-mirror-pods changes that)",
            source=source,
        )
    if pod.host_network and not config.container_credentials:
        return PodDecision(
            "denied",
            bindings=names,
            reason=Reason.HOST_NETWORK,
            message=f"pod {pod.name} uses hostNetwork: it shares the node's IP, so the proxy cannot tell it apart; no role is served",
            source=source,
        )
    return None


def _decide_explicit(pod: facts.PodFacts, candidates: list[_Candidate], namespace: policy.NamespacePolicy,
                     base: roles.BaseArn | None, config: Config) -> PodDecision:
    names = tuple(c.binding for c in candidates)
    if len({c.settings for c in candidates}) > 1:
        described = "; ".join(c.describe() for c in candidates)
        return PodDecision("conflict", bindings=names, reason=Reason.CONFLICTING_BINDINGS,
                           message=f"pod {pod.name} is bound to different roles, so it gets none: {described}", source="explicit")
    refused = _unservable(pod, config, names, "explicit")
    if refused is not None:
        return refused
    chosen = candidates[0]
    verdict = _permitted(namespace, chosen.role, chosen.via, base)
    if not verdict.allowed:
        return PodDecision("denied", bindings=names, reason=verdict.reason, message=verdict.message, source="explicit")
    durations = [c.duration for c in candidates if c.duration is not None]
    return _granted(pod, chosen, min(durations) if durations else None, config, names, "explicit")


def _fallback(pod: facts.PodFacts, namespace: policy.NamespacePolicy, config: Config,
              service_account: facts.ServiceAccountFacts | None) -> tuple[Source, str, str] | None:
    """(level, what says so, the role as written) of the first lower level that names a role."""
    if config.irsa and service_account is not None and service_account.role is not None:
        return "serviceaccount", f"ServiceAccount {service_account.name}'s {facts.IRSA_ANNOTATION}", service_account.role
    if namespace.default_role is not None:
        return "namespace-default", f"namespace {pod.namespace}'s {facts.DEFAULT_ROLE_ANNOTATION}", namespace.default_role
    if config.default_role is not None:
        return "cluster-default", "the operator's --default-role", config.default_role
    return None


def _decide_fallback(pod: facts.PodFacts, namespace: policy.NamespacePolicy, base: roles.BaseArn | None, config: Config,
                     service_account: facts.ServiceAccountFacts | None) -> PodDecision:
    found = _fallback(pod, namespace, config, service_account)
    if found is None:
        return NONE
    source, where, written = found
    default = source != "serviceaccount"
    if default and (pod.host_network or (pod.mirror and not config.allow_mirror_pods)):
        return NONE  # a default is not asked for: no refusal to report on every such pod
    try:
        role = roles.resolve(written, base)
    except roles.RoleError as error:
        if source == "cluster-default":
            return NONE  # a name, before the operator's account is known (the settings checked the rest)
        return PodDecision("error", reason=Reason.INVALID_ROLE, message=f"{where}: {error}", source=source)
    refused = _unservable(pod, config, (), source)
    if refused is not None:
        return dataclasses.replace(refused, message=f"{refused.message} ({where} names {role.arn})")
    verdict = namespace.check(role, base)
    if not verdict.allowed:
        if source == "cluster-default":
            return NONE
        return PodDecision("denied", reason=verdict.reason, message=f"{where}: {verdict.message}", source=source)
    return _granted(pod, _Candidate(where, role, None, None), None, config, (), source)


def _granted(pod: facts.PodFacts, chosen: _Candidate, duration: int | None, config: Config, names: tuple[str, ...],
             source: Source) -> PodDecision:
    duration = duration or config.default_duration
    if chosen.via is not None:
        duration = min(duration, CHAINED_MAX_DURATION)
    session_name, session_tags = _session(pod, config, chosen)
    key = roles.role_key(chosen.role.arn, chosen.external_id, duration, session_name, pod.uid if config.per_pod else None,
                         via=chosen.via.arn if chosen.via else None, tags=session_tags)
    grant = Grant(key, chosen.role, chosen.external_id, duration, session_name, session_tags, chosen.via)
    via = f" through {chosen.via.arn}" if chosen.via else ""
    return PodDecision("granted", grant=grant, bindings=names, reason=Reason.GRANTED, message=f"role {chosen.role.arn}{via}",
                       source=source)


# --- binding status ---------------------------------------------------------

Phase = Literal["Pending", "Bound", "Denied", "Conflict", "Error"]
PHASES: tuple[Phase, ...] = typing.get_args(Phase)  # as the CRD's status.phase enum lists them
FAILED: frozenset[Phase] = frozenset({"Denied", "Conflict", "Error"})  # a Warning Event on the binding each


@dataclasses.dataclass(frozen=True)
class KeyState:
    """What the credential cache says of one key (never the credentials)."""

    state: Literal["ok", "pending", "failed"]
    expiration: str | None = None  # RFC 3339, when ok
    reason: str = ""  # a Reason, or STS's error code when failed
    message: str = ""


@dataclasses.dataclass(frozen=True)
class BindingStatus:
    phase: Phase
    reason: str  # a Reason, or STS's error code (phase Error)
    message: str
    role_arn: str | None = None
    pods: int = 0
    expiration: str | None = None


def binding_status(
    evaluation: BindingEval | None,
    decisions: list[tuple[facts.PodFacts, PodDecision]],
    key_states: dict[str, KeyState],
    contested: Mapping[tuple[str, str], str] | None = None,
) -> BindingStatus:
    """The status of one binding from its own evaluation and the decisions of the pods it applies to.

    ``contested``: the granted pods that are not served because another live
    pod claims their IP (why, by pod key). They are not counted as served; a
    binding none of whose pods is served says Conflict.
    """
    contested = contested or {}
    role_arn = evaluation.role.arn if evaluation and evaluation.role else None
    if evaluation is not None and evaluation.error is not None:
        return BindingStatus("Error", evaluation.error_reason, evaluation.error)
    owned = evaluation is not None and evaluation.binding.pod_owned
    if evaluation is not None and not owned and evaluation.verdict is not None and not evaluation.verdict.allowed:
        return BindingStatus("Denied", evaluation.verdict.reason, evaluation.verdict.message, role_arn)
    for outcome, phase in (("error", "Error"), ("conflict", "Conflict"), ("denied", "Denied")):
        hits = [d for _, d in decisions if d.outcome == outcome]
        # A user binding is not Denied for one hostNetwork pod among others: that pod gets its own Event.
        if hits and (owned or outcome != "denied" or len(hits) == len(decisions)):
            first = hits[0]
            return BindingStatus(phase, first.reason, first.message + _more(len(hits)), role_arn)  # type: ignore[arg-type]
    granted = [(p, d) for p, d in decisions if d.outcome == "granted" and d.grant is not None]
    if not granted:
        what = "its pod has finished" if owned else f"no running pod matches its {_selection(evaluation)}"
        return BindingStatus("Pending", Reason.NO_PODS, what, role_arn)
    if role_arn is None:
        role_arn = granted[0][1].grant.role.arn  # type: ignore[union-attr]
    unserved = [contested[p.key] for p, _ in granted if p.key in contested]
    served = [(p, d) for p, d in granted if p.key not in contested]
    if not served:
        return BindingStatus("Conflict", Reason.IP_CONFLICT, unserved[0] + _more(len(unserved)), role_arn)
    not_served = f"; not served: {unserved[0]}{_more(len(unserved))}" if unserved else ""
    states = [key_states.get(d.grant.key, KeyState("pending")) for _, d in served]  # type: ignore[union-attr]
    failed = [s for s in states if s.state == "failed"]
    if failed:
        return BindingStatus("Error", failed[0].reason, failed[0].message, role_arn)
    ok = [s for s in states if s.state == "ok"]
    if len(ok) < len(states):
        default = KeyState("pending", reason=Reason.ASSUMING_ROLE, message=f"assuming {role_arn}")
        waiting = next((s for s in states if s.state == "pending" and s.reason), default)
        return BindingStatus("Pending", waiting.reason, waiting.message + not_served, role_arn, pods=len(ok))
    expirations = sorted(s.expiration for s in ok if s.expiration)
    return BindingStatus(
        "Bound", Reason.CREDENTIALS_ISSUED, f"{len(ok)} pod(s) served {role_arn}{not_served}", role_arn, pods=len(ok),
        expiration=expirations[0] if expirations else None,
    )


def _selection(evaluation: BindingEval | None) -> str:
    """What a user binding selects pods by, for its status."""
    binding = evaluation.binding if evaluation is not None else None
    if binding is None or binding.service_account is None:
        return "podSelector"
    if binding.pod_selector is None:
        return f"serviceAccountName {binding.service_account!r}"
    return f"podSelector and serviceAccountName {binding.service_account!r}"


def _more(count: int) -> str:
    return f" (and {count - 1} more pods)" if count > 1 else ""
