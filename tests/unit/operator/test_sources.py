"""Where a pod's role comes from: one precedence order (explicit, ServiceAccount, namespace default, cluster default),
conflicts within a level, and the namespace policy over every source; per-binding intermediate roles and session tags."""

from __future__ import annotations

import pytest

from podiam_operator._core import decide, facts, roles, tags
from tests.unit.operator.conftest import binding, namespace, pod, service_account

pytestmark = pytest.mark.unit
BASE = roles.BaseArn("aws", "123456789012")
OWN = "arn:aws:iam::123456789012:role/"
IRSA = decide.Config(irsa=True)


def decide_(p: facts.PodFacts, *, ns: object = None, bindings: tuple[facts.BindingFacts, ...] = (),
            config: decide.Config = IRSA, account: facts.ServiceAccountFacts | None = None) -> decide.PodDecision:
    policy = ns if ns is not None else namespace()
    evaluations = [decide.evaluate_binding(b, policy, BASE) for b in bindings]  # type: ignore[arg-type]
    return decide.decide_pod(p, policy, evaluations, BASE, config, account)  # type: ignore[arg-type]


def role_of(decision: decide.PodDecision) -> str | None:
    return decision.grant.role.name if decision.grant else None


# --- the order ---------------------------------------------------------------------------------------


def test_each_level_is_used_when_every_higher_one_names_nothing() -> None:
    config = decide.Config(irsa=True, default_role="ClusterDefault")
    ns = namespace(default_role="NsDefault")
    sa = service_account(role=OWN + "SaRole")
    by_label = binding(name="web", role="BindingRole", selector={"matchLabels": {"app": "web"}})
    labelled = pod(role=None, labels={"app": "web"})
    cases = [
        (pod(role="AnnotationRole"), (), sa, ns, "AnnotationRole", "explicit"),
        (labelled, (by_label,), sa, ns, "BindingRole", "explicit"),
        (pod(role=None), (by_label,), sa, ns, "SaRole", "serviceaccount"),
        (pod(role=None), (), None, ns, "NsDefault", "namespace-default"),
        (pod(role=None), (), None, namespace(), "ClusterDefault", "cluster-default"),
    ]
    for p, bindings, account, policy, expected, source in cases:
        decision = decide_(p, ns=policy, bindings=bindings, config=config, account=account)
        assert (decision.outcome, role_of(decision), decision.source) == ("granted", expected, source), (expected, decision)


def test_an_explicit_role_beats_every_default_and_is_no_conflict() -> None:
    decision = decide_(pod(role="Mine"), ns=namespace(default_role="NsDefault"), account=service_account(role=OWN + "Sa"),
                       config=decide.Config(irsa=True, default_role="ClusterDefault"))
    assert (decision.outcome, role_of(decision)) == ("granted", "Mine")


def test_the_annotation_and_a_binding_are_one_level_different_roles_conflict() -> None:
    by_sa = binding(name="by-sa", role="BindingRole", service_account="sa")
    decision = decide_(pod(role="Mine"), bindings=(by_sa,))
    assert (decision.outcome, decision.reason) == ("conflict", "ConflictingBindings")
    assert set(decision.bindings) == {"app", "by-sa"}
    by_label = binding(name="by-label", role="Other", selector={})
    both = decide_(pod(role=None), bindings=(by_sa, by_label))
    assert both.outcome == "conflict" and "by-sa -> " + OWN + "BindingRole" in both.message


def test_the_same_role_with_different_settings_at_one_level_is_a_conflict() -> None:
    plain = binding(name="plain", role="R", service_account="sa")
    chained = binding(name="chained", role="R", selector={}, intermediate="Hop")
    tagged = binding(name="tagged", role="R", selector={}, tags={"team": "a"})
    for other in (chained, tagged):
        decision = decide_(pod(role=None), bindings=(plain, other))
        assert decision.outcome == "conflict", other.name
    assert "through " + OWN + "Hop" in decide_(pod(role=None), bindings=(plain, chained)).message
    assert decide_(pod(role=None), bindings=(plain, binding(name="twin", role="R", selector={}))).outcome == "granted"


def test_a_level_that_names_a_role_decides_even_when_refused() -> None:
    """No falling through to a lower level: a refused ServiceAccount role does not hand the pod the namespace's default."""
    ns = namespace(permitted="NsDefault", default_role="NsDefault")
    decision = decide_(pod(role=None), ns=ns, account=service_account(role=OWN + "SaRole"))
    assert (decision.outcome, decision.reason, decision.source) == ("denied", "RoleNotPermitted", "serviceaccount")
    assert decision.message.startswith("ServiceAccount sa's eks.amazonaws.com/role-arn: role ")


# --- bindings by ServiceAccount ---------------------------------------------------------------------------


def test_a_binding_selects_by_service_account_alone_or_with_labels() -> None:
    alone = binding(name="alone", role="R", service_account="sa")
    both = binding(name="both", role="R", service_account="sa", selector={"matchLabels": {"app": "web"}})
    assert decide_(pod(role=None, service_account="sa"), bindings=(alone,)).outcome == "granted"
    assert decide_(pod(role=None, service_account="other"), bindings=(alone,)).outcome == "none"
    assert decide_(pod(role=None, service_account="sa", labels={"app": "web"}), bindings=(both,)).outcome == "granted"
    assert decide_(pod(role=None, service_account="sa", labels={"app": "db"}), bindings=(both,)).outcome == "none"
    assert decide_(pod(role=None, service_account="other", labels={"app": "web"}), bindings=(both,)).outcome == "none"


# --- IRSA's ServiceAccount annotation ----------------------------------------------------------------------


def test_irsa_annotations_are_opt_in() -> None:
    account = service_account(role=OWN + "SaRole")
    assert decide_(pod(role=None), account=account, config=decide.Config()).outcome == "none"
    assert role_of(decide_(pod(role=None), account=account)) == "SaRole"


def test_an_irsa_role_goes_through_the_namespace_policy_like_an_annotation() -> None:
    account = service_account(role="arn:aws:iam::999999999999:role/reader")
    denied = decide_(pod(role=None), ns=namespace(permitted="reader"), account=account)
    assert (denied.outcome, denied.reason) == ("denied", "RoleNotPermitted")
    assert "a role name stands for the operator's own account" in denied.message
    invalid = decide_(pod(role=None), account=service_account(role=OWN + "team/../admin"))
    assert (invalid.outcome, invalid.reason, invalid.source) == ("error", "InvalidRole", "serviceaccount")
    host = decide_(pod(role=None, host_network=True), account=account, ns=namespace())
    assert (host.outcome, host.reason) == ("denied", "HostNetwork")  # asked for by someone: said


# --- defaults ---------------------------------------------------------------------------------------------


def test_a_namespace_default_goes_through_its_policy_and_says_so() -> None:
    denied = decide_(pod(role=None), ns=namespace(permitted="reader", default_role="writer"))
    assert (denied.outcome, denied.reason, denied.source) == ("denied", "RoleNotPermitted", "namespace-default")
    assert denied.message.startswith("namespace team's podiam.io/default-role: ")
    error = decide_(pod(role=None), ns=namespace(default_role="team/../admin"))
    assert (error.outcome, error.reason) == ("error", "InvalidRole")


def test_the_cluster_default_applies_only_where_the_namespace_permits_it_and_silently_not_elsewhere() -> None:
    config = decide.Config(default_role="ClusterDefault")
    assert role_of(decide_(pod(role=None), ns=namespace(permitted="ClusterDefault"), config=config)) == "ClusterDefault"
    for ns in (namespace(permitted=None), namespace(permitted="other"), namespace(permitted="(")):
        assert decide_(pod(role=None), ns=ns, config=config) is decide.NONE
    # A name waits for the operator's account, without a word to every pod.
    unknown = decide.decide_pod(pod(role=None), namespace(), [], None, config)
    assert unknown is decide.NONE


@pytest.mark.parametrize("change", [{"host_network": True}, {"mirror": True}])
def test_defaults_never_apply_to_pods_that_cannot_be_served(change: dict[str, bool]) -> None:
    p = pod(role=None, **change)
    assert decide_(p, ns=namespace(default_role="NsDefault")) is decide.NONE
    assert decide_(p, config=decide.Config(default_role="ClusterDefault")) is decide.NONE


# --- intermediate roles -------------------------------------------------------------------------------------


def test_an_intermediate_role_passes_the_namespace_policy_too() -> None:
    chained = binding(name="x", role="Target", selector={}, intermediate="arn:aws:iam::999999999999:role/Hop")
    evaluation = decide.evaluate_binding(chained, namespace(permitted="Target"), BASE)
    assert evaluation.verdict is not None and not evaluation.verdict.allowed
    assert evaluation.verdict.message.startswith("spec.intermediateRole: role arn:aws:iam::999999999999:role/Hop is not")
    assert decide.binding_status(evaluation, [], {}).phase == "Denied"
    pod_decision = decide_(pod(role=None), ns=namespace(permitted="Target"), bindings=(chained,))
    assert (pod_decision.outcome, pod_decision.reason) == ("denied", "RoleNotPermitted")
    allowed = decide_(pod(role=None), ns=namespace(permitted=r"Target|arn:aws:iam::999999999999:role/Hop"), bindings=(chained,))
    assert allowed.grant is not None and allowed.grant.via is not None and allowed.grant.via.name == "Hop"


def test_an_intermediate_role_is_checked_like_a_role() -> None:
    bad = decide.evaluate_binding(binding(name="x", role="T", selector={}, intermediate="a/../b"), namespace(), BASE)
    assert (bad.error_reason, (bad.error or "")[:24]) == ("InvalidRole", "spec.intermediateRole: '")
    long = decide.evaluate_binding(binding(name="x", role="T", selector={}, intermediate="H", duration=7200), namespace(), BASE)
    assert long.error is not None and "role chaining" in long.error


def test_a_chained_session_lasts_at_most_an_hour_and_has_its_own_key() -> None:
    config = decide.Config(default_duration=7200)
    direct = decide_(pod(role=None), bindings=(binding(name="d", role="T", selector={}),), config=config)
    chained = decide_(pod(role=None), bindings=(binding(name="c", role="T", selector={}, intermediate="H"),), config=config)
    assert direct.grant and chained.grant
    assert (direct.grant.duration, chained.grant.duration) == (7200, 3600)
    assert direct.grant.key != chained.grant.key


# --- session tags ---------------------------------------------------------------------------------------------


def test_shared_sessions_carry_the_cluster_name_and_the_bindings_tags_per_pod_ones_the_pods_too() -> None:
    b = binding(name="web", role="R", selector={}, tags={"team": "a", "cost-center": "42"})
    shared = decide_(pod(role=None), bindings=(b,), config=decide.Config(cluster_name="prod-1"))
    assert shared.grant is not None and dict(shared.grant.tags) == {"eks-cluster-name": "prod-1", "team": "a", "cost-center": "42"}
    per_pod = decide_(pod(role=None), bindings=(b,), config=decide.Config(per_pod=True, cluster_name="prod-1"))
    assert per_pod.grant is not None and set(dict(per_pod.grant.tags)) == {
        "kubernetes-namespace", "kubernetes-pod-name", "kubernetes-pod-uid", "kubernetes-service-account",
        "eks-cluster-name", "team", "cost-center"}
    plain = decide_(pod(role=None), bindings=(binding(name="p", role="R", selector={}),), config=decide.Config())
    assert plain.grant is not None and plain.grant.tags == ()  # no tag, no sts:TagSession needed (as before)
    assert shared.grant.key != plain.grant.key  # different tags, different sessions


def test_tags_off_per_binding() -> None:
    b = binding(name="web", role="R", selector={}, tags_off=True)
    decision = decide_(pod(role=None), bindings=(b,), config=decide.Config(per_pod=True, cluster_name="prod-1"))
    assert decision.grant is not None and decision.grant.tags == ()


@pytest.mark.parametrize("key", sorted(tags.RESERVED) + ["Kubernetes-Namespace", "EKS-CLUSTER-NAME", "aws:foo", "AWS:x"])
def test_a_binding_cannot_set_the_operators_tags_in_any_case(key: str) -> None:
    evaluation = decide.evaluate_binding(binding(name="x", role="R", selector={}, tags={key: "victims"}), namespace(), BASE)
    assert evaluation.error_reason == "ReservedSessionTag" and key in (evaluation.error or "")
    status = decide.binding_status(evaluation, [], {})
    assert (status.phase, status.reason) == ("Error", "ReservedSessionTag")
    assert decide_(pod(role=None), bindings=(binding(name="x", role="R", selector={}, tags={key: "v"}),)).outcome == "none"


@pytest.mark.parametrize(("raw", "says"), [
    ({"bad\\key": "v"}, "must be 1-128"),
    ({"k": "v" * 257}, "at most 256"),
    ({"Team": "a", "team": "b"}, "case-insensitive"),
    ({f"k{i}": "v" for i in range(41)}, "at most 40"),
    ({"k": 3}, "string values"),
    (["k"], "string values"),
])
def test_unusable_tags_are_an_error_that_says_why(raw: object, says: str) -> None:
    evaluation = decide.evaluate_binding(binding(name="x", role="R", selector={}, tags=raw), namespace(), BASE)
    assert evaluation.error_reason == "InvalidSessionTags" and says in (evaluation.error or ""), evaluation.error
