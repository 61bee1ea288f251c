from __future__ import annotations

import pytest

from podiam_operator._core import decide, roles
from tests.unit.operator.conftest import binding, namespace, pod

pytestmark = pytest.mark.unit
BASE = roles.BaseArn("aws", "123456789012")
CONFIG = decide.Config()


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
    per_pod = decide.Config(per_pod=True)
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
    assert "spec.podSelector or spec.serviceAccountName is needed" in (evaluations[0].error or "")
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


def test_mirror_pods_are_refused_unless_allowed() -> None:
    mirror = pod(mirror=True)
    decision = decide.decide_pod(mirror, namespace(), [], BASE, CONFIG)
    assert (decision.outcome, decision.reason) == ("denied", "MirrorPod")
    assert "kubelet of node node-1" in decision.message and "--allow-mirror-pods" in decision.message
    allowed = decide.decide_pod(mirror, namespace(), [], BASE, decide.Config(allow_mirror_pods=True))
    assert allowed.outcome == "granted"
    # A user binding selecting it is not Denied for it alone; the pod's Event says why.
    b = binding(name="web", role="WebRole", selector={"matchLabels": {"app": "web"}})
    (evaluation,) = evals(b)
    others = pod(name="other", role=None, labels={"app": "web"})
    static = pod(name="static", role=None, labels={"app": "web"}, mirror=True)
    decisions = [(p, decide.decide_pod(p, namespace(), [evaluation], BASE, CONFIG)) for p in (others, static)]
    assert decide.binding_status(evaluation, decisions, {}).phase == "Pending"  # assuming, for "other"
    assert decide.binding_status(evaluation, decisions[1:], {}).phase == "Denied"


def test_session_names_never_split_shared_sessions() -> None:
    plain = decide.decide_pod(pod(name="a"), namespace(), [], BASE, CONFIG)
    named = decide.decide_pod(pod(name="b", session_name="other-team.victim"), namespace(), [], BASE, CONFIG)
    assert plain.grant and named.grant and plain.grant.key == named.grant.key
    assert named.grant.session_name == "podiam"
    ignored = decide.session_name_ignored(pod(session_name="x"), CONFIG)
    assert ignored is not None and "shared sessions" in ignored
    assert decide.session_name_ignored(pod(), CONFIG) is None
    assert decide.session_name_ignored(pod(session_name="x"), decide.Config(per_pod=True)) is None


@pytest.mark.parametrize(("namespace_name", "annotation", "expected"), [
    ("team", None, "team.app"),
    ("team", "nightly", "team.nightly"),
    ("team", "victims.app", "team.victims.app"),  # cannot pass for namespace "victims"
    ("team", "bob's job/nightly", "team.bob-s-job-nightly"),
    ("n" * 63, "x", "n" * 63 + "."),  # the namespace always fits whole (at most 63 characters, no ".")
])
def test_per_pod_session_names_start_with_the_namespace(namespace_name: str, annotation: str | None, expected: str) -> None:
    config = decide.Config(per_pod=True)
    p = pod(name="app", namespace=namespace_name, session_name=annotation)
    decision = decide.decide_pod(p, namespace(name=namespace_name), [], BASE, config)
    assert decision.grant is not None and decision.grant.session_name == expected


def test_a_role_iam_would_refuse_is_an_invalid_role_on_the_binding() -> None:
    (evaluation,) = evals(binding(name="b", role="team-a/../admin", selector={}))
    status = decide.binding_status(evaluation, [], {})
    assert (status.phase, status.reason) == ("Error", "InvalidRole")
    assert status.message.startswith("spec.role: ") and "'..' path segments are refused" in status.message
    decision = decide.decide_pod(pod(role="team-a/../admin"), namespace(), [], BASE, CONFIG)
    assert (decision.outcome, decision.reason) == ("error", "InvalidRole")


def test_a_binding_counts_only_the_pods_it_serves() -> None:
    b = binding(name="web", role="WebRole", selector={"matchLabels": {"app": "web"}})
    (evaluation,) = evals(b)
    pods = [pod(name=n, role=None, labels={"app": "web"}) for n in ("a", "b")]
    decisions = [(p, decide.decide_pod(p, namespace(), [evaluation], BASE, CONFIG)) for p in pods]
    key = decisions[0][1].grant.key  # type: ignore[union-attr]
    ok = {key: decide.KeyState("ok", expiration="2030-01-01T01:00:00Z")}
    one = decide.binding_status(evaluation, decisions, ok, {pods[1].key: "pod b: its IP is also claimed"})
    assert (one.phase, one.pods) == ("Bound", 1)
    assert one.message.endswith("; not served: pod b: its IP is also claimed")
    none = decide.binding_status(evaluation, decisions, ok, {p.key: f"pod {p.name}: clash" for p in pods})
    assert (none.phase, none.reason, none.pods, none.message) == ("Conflict", "IPConflict", 0, "pod a: clash (and 1 more pods)")


def test_a_pending_binding_says_what_it_waits_for() -> None:
    p = pod(role=None, labels={"app": "web"})
    (evaluation,) = evals(binding(name="web", role="WebRole", selector={"matchLabels": {"app": "web"}}))
    decision = decide.decide_pod(p, namespace(), [evaluation], BASE, CONFIG)
    key = decision.grant.key  # type: ignore[union-attr]
    waiting = decide.binding_status(evaluation, [(p, decision)], {key: decide.KeyState("pending", reason="StsBudget", message="m")})
    assert (waiting.phase, waiting.reason, waiting.message) == ("Pending", "StsBudget", "m")
    plain = decide.binding_status(evaluation, [(p, decision)], {})
    assert (plain.phase, plain.reason) == ("Pending", "AssumingRole")
