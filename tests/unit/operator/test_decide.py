from __future__ import annotations

import pytest

from podiam_operator._core import decide, roles
from tests.unit.operator.conftest import binding, namespace, pod

pytestmark = pytest.mark.unit
BASE = roles.BaseArn("aws", "123456789012")
CONFIG = decide.SessionConfig()


def evals(*bindings_: object, permitted: str | None = ".*") -> list[decide.BindingEval]:
    return [decide.evaluate_binding(b, namespace(permitted=permitted), BASE) for b in bindings_]  # type: ignore[arg-type]


def test_annotation_grants_the_resolved_role() -> None:
    decision = decide.decide_pod(pod(role="MyRole"), namespace(), [], BASE, CONFIG)
    assert decision.outcome == "granted"
    assert decision.grant is not None
    assert decision.grant.role.arn == "arn:aws:iam::123456789012:role/MyRole"
    assert decision.grant.duration == 3600
    assert decision.bindings == ("app",)


def test_pods_on_one_role_share_a_key_unless_per_pod() -> None:
    a = decide.decide_pod(pod(name="a"), namespace(), [], BASE, CONFIG)
    b = decide.decide_pod(pod(name="b"), namespace(), [], BASE, CONFIG)
    assert a.grant and b.grant and a.grant.key == b.grant.key
    per_pod = decide.SessionConfig(per_pod=True)
    pa = decide.decide_pod(pod(name="a"), namespace(), [], BASE, per_pod)
    pb = decide.decide_pod(pod(name="b"), namespace(), [], BASE, per_pod)
    assert pa.grant and pb.grant and pa.grant.key != pb.grant.key
    tags = dict(pa.grant.tags)
    assert tags["kubernetes-namespace"] == "team" and tags["kubernetes-pod-name"] == "a"
    assert tags["kubernetes-service-account"] == "sa" and tags["kubernetes-pod-uid"]
    assert pa.grant.session_name == "team.a"


def test_no_annotation_no_binding_no_role() -> None:
    assert decide.decide_pod(pod(role=None), namespace(), [], BASE, CONFIG).outcome == "none"


def test_namespace_gates_every_binding() -> None:
    denied = decide.decide_pod(pod(), namespace(permitted=None), [], BASE, CONFIG)
    assert (denied.outcome, denied.reason) == ("denied", "NamespaceNotPermitted")
    other = decide.decide_pod(pod(role="foo-admin"), namespace(permitted="foo"), [], BASE, CONFIG)
    assert (other.outcome, other.reason) == ("denied", "RoleNotPermitted")
    invalid = decide.decide_pod(pod(role="foo"), namespace(permitted="("), [], BASE, CONFIG)
    assert (invalid.outcome, invalid.reason) == ("denied", "InvalidPermittedRegex")


def test_host_network_is_refused_with_a_reason() -> None:
    decision = decide.decide_pod(pod(host_network=True), namespace(), [], BASE, CONFIG)
    assert (decision.outcome, decision.reason) == ("denied", "HostNetwork")
    assert "hostNetwork" in decision.message


def test_finished_and_terminating_pods_get_nothing() -> None:
    assert decide.decide_pod(pod(deleting=True), namespace(), [], BASE, CONFIG).outcome == "none"
    assert decide.decide_pod(pod(phase="Succeeded"), namespace(), [], BASE, CONFIG).outcome == "none"
    assert decide.decide_pod(pod(phase="Failed"), namespace(), [], BASE, CONFIG).outcome == "none"


def test_invalid_annotation_is_an_error() -> None:
    decision = decide.decide_pod(pod(role="not a role"), namespace(), [], BASE, CONFIG)
    assert (decision.outcome, decision.reason) == ("error", "InvalidRole")


def test_user_binding_selects_pods_by_label() -> None:
    b = binding(name="web", role="WebRole", selector={"matchLabels": {"app": "web"}}, duration=7200)
    hit = decide.decide_pod(pod(role=None, labels={"app": "web"}), namespace(), evals(b), BASE, CONFIG)
    assert hit.outcome == "granted" and hit.grant and hit.grant.role.name == "WebRole" and hit.grant.duration == 7200
    assert hit.bindings == ("web",)
    miss = decide.decide_pod(pod(role=None, labels={"app": "db"}), namespace(), evals(b), BASE, CONFIG)
    assert miss.outcome == "none"


def test_conflicting_bindings_give_nothing_and_name_each_other() -> None:
    b = binding(name="web", role="WebRole", selector={"matchLabels": {"app": "web"}})
    decision = decide.decide_pod(pod(role="MyRole", labels={"app": "web"}), namespace(), evals(b), BASE, CONFIG)
    assert decision.outcome == "conflict" and decision.grant is None
    assert set(decision.bindings) == {"app", "web"}
    assert "WebRole" in decision.message and "MyRole" in decision.message


def test_same_role_twice_is_no_conflict() -> None:
    b = binding(name="web", role="MyRole", selector={})
    assert decide.decide_pod(pod(role="MyRole"), namespace(), evals(b), BASE, CONFIG).outcome == "granted"


def test_broken_user_bindings_do_not_apply() -> None:
    missing = binding(name="nosel", role="X")
    bad_selector = binding(name="badsel", role="X", selector={"matchLabels": {"a": "!"}})
    bad_role = binding(name="badrole", role="x y", selector={})
    evaluations = evals(missing, bad_selector, bad_role)
    assert [e.error is not None for e in evaluations] == [True, True, True]
    assert "podSelector is missing" in (evaluations[0].error or "")
    assert decide.decide_pod(pod(role=None), namespace(), evaluations, BASE, CONFIG).outcome == "none"


def test_binding_status_phases() -> None:
    p = pod(role=None, labels={"app": "web"})
    b = binding(name="web", role="WebRole", selector={"matchLabels": {"app": "web"}})
    (evaluation,) = evals(b)
    decision = decide.decide_pod(p, namespace(), [evaluation], BASE, CONFIG)
    assert decision.grant is not None
    key = decision.grant.key
    pending = decide.binding_status(evaluation, [(p, decision)], {})
    assert pending.phase == "Pending"
    bound = decide.binding_status(evaluation, [(p, decision)], {key: decide.KeyState("ok", expiration="2030-01-01T01:00:00Z")})
    assert (bound.phase, bound.pods, bound.expiration, bound.role_arn) == (
        "Bound", 1, "2030-01-01T01:00:00Z", "arn:aws:iam::123456789012:role/WebRole")
    failed = decide.binding_status(evaluation, [(p, decision)], {key: decide.KeyState("failed", reason="AccessDenied", message="no")})
    assert (failed.phase, failed.reason) == ("Error", "AccessDenied")
    assert decide.binding_status(evaluation, [], {}).phase == "Pending"
    (denied_eval,) = evals(b, permitted="other")
    assert decide.binding_status(denied_eval, [], {}).phase == "Denied"
    (error_eval,) = evals(binding(name="x", role="X"))
    assert decide.binding_status(error_eval, [], {}).phase == "Error"
