"""Which role a pod gets, or why it gets none; and what a binding's status says.

Pure functions over facts: the world model calls them, the handlers never do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from podiam_operator._core import facts, policy, roles, selectors

Outcome = Literal["none", "granted", "denied", "conflict", "error"]


@dataclasses.dataclass(frozen=True)
class Config:
    """What decisions depend on besides the facts: the operator's settings."""

    default_duration: int = 3600
    session_name: str = "podiam"  # of shared sessions
    per_pod: bool = False
    allow_mirror_pods: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """One credential set to obtain from STS, identified by ``key``."""

    key: str
    role: roles.RoleRef
    external_id: str | None
    duration: int
    session_name: str
    tags: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class BindingEval:
    """A binding on its own: its role, its selector, whether the namespace permits it."""

    binding: facts.BindingFacts
    role: roles.RoleRef | None = None
    selector: selectors.Selector | None = None
    error: str | None = None  # the spec is unusable (phase Error)
    error_reason: str = "InvalidSpec"
    verdict: policy.Verdict | None = None  # None when error is set

    @property
    def usable(self) -> bool:
        return self.error is None and not self.binding.deleting


def evaluate_binding(binding: facts.BindingFacts, namespace: policy.NamespacePolicy, base: roles.BaseArn | None) -> BindingEval:
    if binding.role is None:
        return BindingEval(binding, error="spec.role is missing")
    selector = None
    if not binding.pod_owned:
        if binding.pod_selector is None:
            return BindingEval(
                binding,
                error="spec.podSelector is missing: a binding selects pods by label "
                "(bindings without a selector are made by the operator for annotated pods)",
            )
        try:
            selector = selectors.parse(binding.pod_selector)
        except selectors.SelectorError as error:
            return BindingEval(binding, error=f"invalid podSelector: {error}")
    try:
        role = roles.resolve(binding.role, base)
    except roles.RoleError as error:
        return BindingEval(binding, error=f"spec.role: {error}", error_reason="InvalidRole")
    return BindingEval(binding, role=role, selector=selector, verdict=namespace.check(role, base))


@dataclasses.dataclass(frozen=True, slots=True)
class PodDecision:
    outcome: Outcome
    grant: Grant | None = None
    bindings: tuple[str, ...] = ()  # names of every binding that applies to the pod
    reason: str = ""
    message: str = ""


NONE = PodDecision("none")


@dataclasses.dataclass(frozen=True)
class _Candidate:
    binding: str
    role: roles.RoleRef
    external_id: str | None
    duration: int | None


def _session(pod: facts.PodFacts, config: Config) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The session name and tags of the pod's credentials.

    Shared sessions serve every pod on the role, of every namespace: no pod
    names them (a name per pod would also be an AssumeRole per name). A
    per-pod session's name is ``<namespace>.<the annotation, or the pod's
    name>``: a namespace name holds no ".", so no pod of another namespace
    can take a name that starts like this one (in CloudTrail, or in a
    resource policy matching ``assumed-role/<role>/<namespace>.*``).
    """
    if config.per_pod:
        name = roles.sanitize_session_name(f"{pod.namespace}.{pod.session_name or pod.name}")
        # The tags EKS Pod Identity sets, for CloudTrail attribution and ABAC.
        tags = (
            ("kubernetes-namespace", pod.namespace),
            ("kubernetes-pod-name", pod.name),
            ("kubernetes-pod-uid", pod.uid),
            ("kubernetes-service-account", pod.service_account),
        )
        return name, tags
    return config.session_name, ()


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
) -> PodDecision:
    """The pod's role from its annotation and the user bindings selecting it."""
    if pod.finished:
        return NONE
    candidates: list[_Candidate] = []
    applying: list[str] = []
    if pod.role is not None:
        applying.append(pod.name)  # the pod-owned binding is named after the pod
        try:
            role = roles.resolve(pod.role, base)
        except roles.RoleError as error:
            return PodDecision("error", bindings=(pod.name,), reason="InvalidRole", message=f"{facts.ROLE_ANNOTATION}: {error}")
        if pod.external_id is not None:
            try:
                roles.check_external_id(pod.external_id)
            except roles.RoleError as error:
                return PodDecision("error", bindings=(pod.name,), reason="InvalidExternalId",
                                   message=f"{facts.EXTERNAL_ID_ANNOTATION}: {error}")
        candidates.append(_Candidate(pod.name, role, pod.external_id, None))
    labels = pod.label_map
    for evaluation in bindings:
        binding = evaluation.binding
        if binding.pod_owned or not evaluation.usable or evaluation.selector is None or evaluation.role is None:
            continue
        if evaluation.selector.matches(labels):
            applying.append(binding.name)
            candidates.append(_Candidate(binding.name, evaluation.role, binding.external_id, binding.session_duration))
    if not candidates:
        return NONE
    names = tuple(applying)
    distinct = {(c.role.arn, c.external_id) for c in candidates}
    if len(distinct) > 1:
        described = "; ".join(
            f"{c.binding} -> {c.role.arn}" + (" (with an external id)" if c.external_id else "") for c in candidates
        )
        return PodDecision(
            "conflict",
            bindings=names,
            reason="ConflictingBindings",
            message=f"pod {pod.name} is bound to different roles, so it gets none: {described}",
        )
    chosen = candidates[0]
    if pod.mirror and not config.allow_mirror_pods:
        return PodDecision(
            "denied",
            bindings=names,
            reason="MirrorPod",
            message=f"pod {pod.name} is a mirror pod ({facts.MIRROR_ANNOTATION}): the kubelet of node {pod.node} made it from "
            "a static manifest, not a user through the API, so a compromised node could give it any role; no role is served "
            "(the operator's --allow-mirror-pods changes that)",
        )
    if pod.host_network:
        return PodDecision(
            "denied",
            bindings=names,
            reason="HostNetwork",
            message=f"pod {pod.name} uses hostNetwork: it shares the node's IP, so the proxy cannot tell it apart; no role is served",
        )
    verdict = namespace.check(chosen.role, base)
    if not verdict.allowed:
        return PodDecision("denied", bindings=names, reason=verdict.reason, message=verdict.message)
    durations = [c.duration for c in candidates if c.duration is not None]
    duration = min(durations) if durations else config.default_duration
    session_name, tags = _session(pod, config)
    key = roles.role_key(chosen.role.arn, chosen.external_id, duration, session_name, pod.uid if config.per_pod else None)
    grant = Grant(key, chosen.role, chosen.external_id, duration, session_name, tags)
    return PodDecision("granted", grant=grant, bindings=names, reason="Granted", message=f"role {chosen.role.arn}")


# --- binding status ---------------------------------------------------------

Phase = Literal["Pending", "Bound", "Denied", "Conflict", "Error"]


@dataclasses.dataclass(frozen=True)
class KeyState:
    """What the credential cache says of one key (never the credentials)."""

    state: Literal["ok", "pending", "failed"]
    expiration: str | None = None  # RFC 3339, when ok
    reason: str = ""
    message: str = ""


@dataclasses.dataclass(frozen=True)
class BindingStatus:
    phase: Phase
    reason: str
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
        what = "its pod has finished" if owned else "no running pod matches its podSelector"
        return BindingStatus("Pending", "NoPods", what, role_arn)
    if role_arn is None:
        role_arn = granted[0][1].grant.role.arn  # type: ignore[union-attr]
    unserved = [contested[p.key] for p, _ in granted if p.key in contested]
    served = [(p, d) for p, d in granted if p.key not in contested]
    if not served:
        return BindingStatus("Conflict", "IPConflict", unserved[0] + _more(len(unserved)), role_arn)
    not_served = f"; not served: {unserved[0]}{_more(len(unserved))}" if unserved else ""
    states = [key_states.get(d.grant.key, KeyState("pending")) for _, d in served]  # type: ignore[union-attr]
    failed = [s for s in states if s.state == "failed"]
    if failed:
        return BindingStatus("Error", failed[0].reason, failed[0].message, role_arn)
    ok = [s for s in states if s.state == "ok"]
    if len(ok) < len(states):
        default = KeyState("pending", reason="AssumingRole", message=f"assuming {role_arn}")
        waiting = next((s for s in states if s.state == "pending" and s.reason), default)
        return BindingStatus("Pending", waiting.reason, waiting.message + not_served, role_arn, pods=len(ok))
    expirations = sorted(s.expiration for s in ok if s.expiration)
    return BindingStatus(
        "Bound", "CredentialsIssued", f"{len(ok)} pod(s) served {role_arn}{not_served}", role_arn, pods=len(ok),
        expiration=expirations[0] if expirations else None,
    )


def _more(count: int) -> str:
    return f" (and {count - 1} more pods)" if count > 1 else ""
