"""A tenant who may create pods and PodRoleBindings in their own namespace (not annotate it) gets nothing else.

Real stack: the control plane, moto STS behind the counting front, the
operator and two proxies as processes. Every refusal must show on the
binding (phase, reason, Event) and on the pod (Event), and must never reach
STS: the front counts every AssumeRole by role ARN.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ApiError, ControlPlane
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.fault
OWN = moto.ACCOUNT_ID
FOREIGN = "999999999999"
# A small STS budget per namespace, so that the budget test needs few pods (the others use one or two keys each).
BUDGET_BURST, BUDGET_RATE = 4, 0.5


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("hostile"), nodes=2, operator_env={
        "PODIAM_STS_NAMESPACE_BURST": str(BUDGET_BURST), "PODIAM_STS_NAMESPACE_RATE": str(BUDGET_RATE),
    })
    try:
        running.start()
        yield running
    finally:
        running.stop()


def refused(stack: stacks.Stack, ns: str, binding: str, phase: str, reason: str, *, pod: str | None = None) -> str:
    """The binding's phase and reason, an Event with that reason on it (and on the pod); its message."""
    body = stack.wait_binding_phase(ns, binding, phase)
    condition = body["status"]["conditions"][0]
    assert (condition["reason"], condition["status"]) == (reason, "False"), body["status"]
    stack.wait_event(ns, "PodRoleBinding", binding, reason)
    if pod is not None:
        stack.wait_event(ns, "Pod", pod, reason)
    return str(body["status"]["message"])


def never_assumed(stack: stacks.Stack, *arns: str) -> None:
    time.sleep(1.0)  # whatever the operator was going to call has been called
    calls = [c["RoleArn"] for c in stack.sts.assume_role_calls()]
    assert not set(arns) & set(calls), calls


# --- 1. a role name stands for the operator's own account only ----------------------------------------


@pytest.mark.parametrize("role", [
    f"arn:aws:iam::{FOREIGN}:role/reader",  # another account
    f"arn:aws-us-gov:iam::{OWN}:role/reader",  # another partition, the same account number
    f"arn:aws:iam::{FOREIGN}:role/team/reader",
])
def test_a_namespace_permitting_a_name_does_not_permit_that_name_elsewhere(stack: stacks.Stack, ns: str, role: str) -> None:
    stack.set_permitted(ns, "reader|team/reader")
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "app", role=role, node=node, ip=ip)
    message = refused(stack, ns, "app", "Denied", "RoleNotPermitted", pod="app")
    assert role in message
    stack.apply_binding(ns, "by-label", {"role": role, "podSelector": {"matchLabels": {"app": "x"}}})
    refused(stack, ns, "by-label", "Denied", "RoleNotPermitted")
    assert stack.imds(node, ip).status == 404
    never_assumed(stack, role)


def test_a_role_elsewhere_is_permitted_by_its_full_arn_and_a_name_by_its_name(stack: stacks.Stack, ns: str) -> None:
    foreign = f"arn:aws:iam::{FOREIGN}:role/reader"
    stack.set_permitted(ns, f"arn:aws:iam::{FOREIGN}:role/reader|reader")
    node, foreign_ip, own_ip, own_arn_ip = stack.nodes[1], stack.next_ip(), stack.next_ip(), stack.next_ip()
    stack.create_pod(ns, "foreign", role=foreign, node=node, ip=foreign_ip)
    stack.create_pod(ns, "own", role="reader", node=node, ip=own_ip)
    stack.create_pod(ns, "own-arn", role=f"arn:aws:iam::{OWN}:role/reader", node=node, ip=own_arn_ip)
    for name in ("foreign", "own", "own-arn"):
        stack.wait_binding_phase(ns, name, "Bound")
    assert stack.sts.issued_keys()[stack.wait_credentials(node, foreign_ip)["AccessKeyId"]] == foreign
    assert stack.sts.issued_keys()[stack.wait_credentials(node, own_ip)["AccessKeyId"]] == f"arn:aws:iam::{OWN}:role/reader"


@pytest.mark.parametrize("role", [f"arn:aws:iam::{OWN}:role/admin", "admin", f"arn:aws:iam::{OWN}:role/admin-2"])
def test_an_exclusion_is_not_defeated_by_writing_the_other_form(stack: stacks.Stack, ns: str, role: str) -> None:
    stack.set_permitted(ns, "(?!admin).*")
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "app", role=role, node=node, ip=ip)
    refused(stack, ns, "app", "Denied", "RoleNotPermitted", pod="app")
    assert stack.imds(node, ip).status == 404
    never_assumed(stack, f"arn:aws:iam::{OWN}:role/{role.rpartition('/')[2]}")


# --- 2. what IAM would not accept, and "." / ".." segments ---------------------------------------------


@pytest.mark.parametrize("role", [
    "team-a/../admin", "team-a/./admin", "team-a/..", f"arn:aws:iam::{OWN}:role/team-a/../admin",
    "team-a/" + "p/" * 260 + "x",  # a 528-character path: IAM allows 512
])
def test_dot_segments_and_names_iam_refuses_are_errors_never_assumed(stack: stacks.Stack, ns: str, role: str) -> None:
    stack.set_permitted(ns, "team-a/.*|arn:aws:iam::.*")
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "app", role=role, node=node, ip=ip)
    message = refused(stack, ns, "app", "Error", "InvalidRole", pod="app")
    assert message.startswith("spec.role: ") and ("segments are refused" in message or "not a role name" in message
                                                  or "IAM allows 512" in message), message
    stack.apply_binding(ns, "by-label", {"role": role, "podSelector": {"matchLabels": {"app": "x"}}})
    refused(stack, ns, "by-label", "Error", "InvalidRole")
    assert stack.imds(node, ip).status == 404
    never_assumed(stack, f"arn:aws:iam::{OWN}:role/{role}", f"arn:aws:iam::{OWN}:role/admin", role)


def test_what_the_crd_itself_refuses_is_said_on_the_pod(stack: stacks.Stack, ns: str) -> None:
    role = f"arn:aws:iam::{OWN}:role/team-a//admin"  # an empty path segment: the CRD's pattern refuses it
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "app", role=role, node=node, ip=ip)
    event = stack.wait_event(ns, "Pod", "app", "InvalidRole")
    assert "empty path segment" in event["message"]
    with pytest.raises(ApiError) as refusal:
        stack.apply_binding(ns, "by-label", {"role": role, "podSelector": {"matchLabels": {"app": "x"}}})
    assert refusal.value.status == 422
    assert stack.binding(ns, "app") is None and stack.imds(node, ip).status == 404
    never_assumed(stack, role, f"arn:aws:iam::{OWN}:role/admin")


# --- 3. session names do not multiply shared sessions -------------------------------------------------


def test_session_name_annotations_never_multiply_shared_sessions(stack: stacks.Stack, ns: str) -> None:
    arn = f"arn:aws:iam::{OWN}:role/shared-session-role"
    before = len(stack.sts.assume_role_calls(arn))
    pods = [(f"p{i}", stack.nodes[i % 2], stack.next_ip()) for i in range(8)]
    for name, node, ip in pods:
        stack.create_pod(ns, name, role="shared-session-role", node=node, ip=ip,
                         annotations={"iam.amazonaws.com/session-name": f"other-ns.victim-{name}"})
    keys = {stack.wait_credentials(node, ip)["AccessKeyId"] for _, node, ip in pods}
    assert len(keys) == 1
    calls = stack.sts.assume_role_calls(arn)[before:]
    assert [c["RoleSessionName"] for c in calls] == ["podiam"], calls
    event = stack.wait_event(ns, "Pod", "p0", "SessionNameIgnored")
    assert "shared" in event["message"]


# --- 3. one namespace's STS cost is bounded --------------------------------------------------------------


def test_one_namespace_cannot_spend_everyones_sts_calls(stack: stacks.Stack, ns: str) -> None:
    """Each distinct external id is a credential set of its own: 20 of them are 20 AssumeRole calls."""
    arn = f"arn:aws:iam::{OWN}:role/budget-role"
    before = len(stack.sts.assume_role_calls(arn))
    started = time.monotonic()
    for i in range(20):
        stack.create_pod(ns, f"greedy-{i}", role="budget-role", node=stack.nodes[0], ip=stack.next_ip(),
                         annotations={"iam.amazonaws.com/external-id": f"external-{i:04d}"})
    # Another namespace's pod is served at once, whatever the first one queued.
    victim_ns = f"{ns}-victim"
    stack.create_namespace(victim_ns, ".*")
    victim_ip = stack.next_ip()
    stack.create_pod(victim_ns, "victim", role="victim-role", node=stack.nodes[1], ip=victim_ip)
    stack.wait_credentials(stack.nodes[1], victim_ip, timeout=10)
    # The greedy namespace gets its burst, then BUDGET_RATE calls a second.
    time.sleep(3.0)
    made = len(stack.sts.assume_role_calls(arn)) - before
    allowed = BUDGET_BURST + BUDGET_RATE * (time.monotonic() - started) + 1
    assert made <= allowed, (made, allowed)
    # Its waiting bindings say why.
    waiting = [stack.binding(ns, f"greedy-{i}") for i in range(20)]
    messages = [b["status"]["message"] for b in waiting if b and b.get("status", {}).get("phase") == "Pending"]
    assert any("STS budget" in m for m in messages), messages


# --- 7. an IP claimed by two live pods serves nobody, and the status says so -------------------------------


def test_an_ip_conflict_is_what_the_binding_says(stack: stacks.Stack, ns: str) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "a", role="ip-conflict-role", node=node, ip=ip)
    stack.wait_binding_phase(ns, "a", "Bound")
    stack.wait_credentials(node, ip)
    # The API server still shows "a" Running at its IP when "b" (no role) gets it: neither is served.
    stack.create_pod(ns, "b", node=node, ip=ip)
    message = refused(stack, ns, "a", "Conflict", "IPConflict", pod="a")
    assert ip in message and f"{ns}/b" in message
    assert stack.binding(ns, "a")["status"]["pods"] == 0  # type: ignore[index]
    assert stack.imds(node, ip).status == 404
    stack.delete_pod(ns, "b")
    body = stack.wait_binding_phase(ns, "a", "Bound")
    assert body["status"]["pods"] == 1
    stack.wait_credentials(node, ip)


def test_a_user_binding_counts_only_the_pods_it_serves(stack: stacks.Stack, ns: str) -> None:
    node, ip, clash_ip = stack.nodes[1], stack.next_ip(), stack.next_ip()
    stack.apply_binding(ns, "web", {"role": "ip-conflict-web", "podSelector": {"matchLabels": {"app": "web"}}})
    stack.create_pod(ns, "web-1", labels={"app": "web"}, node=node, ip=ip)
    stack.create_pod(ns, "web-2", labels={"app": "web"}, node=node, ip=clash_ip)
    stacks.wait_for(lambda: (b := stack.binding(ns, "web")) and b.get("status", {}).get("pods") == 2, 20, "both pods served")
    stack.create_pod(ns, "squatter", node=node, ip=clash_ip)
    body = stacks.wait_for(lambda: (b := stack.binding(ns, "web")) and b["status"]["pods"] == 1 and b, 20, "one pod served")
    assert body["status"]["phase"] == "Bound" and "web-2" in body["status"]["message"], body["status"]
    stack.wait_event(ns, "Pod", "web-2", "IPConflict")


# --- 8. mirror (static) pods -------------------------------------------------------------------------


def test_mirror_pods_are_refused(stack: stacks.Stack, ns: str) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    # As a kubelet posts a static pod's mirror: bound to its node from the start (the API server insists).
    manifest = stack.pod_manifest(ns, "static", role="mirror-role", annotations={"kubernetes.io/config.mirror": "0123456789abcdef"})
    manifest["spec"]["nodeName"] = node.name
    stack.cp.api("POST", f"/api/v1/namespaces/{ns}/pods", manifest)
    stack.set_ip(ns, "static", ip)
    message = refused(stack, ns, "static", "Denied", "MirrorPod", pod="static")
    assert "kubelet" in message
    assert stack.imds(node, ip).status == 404
    never_assumed(stack, f"arn:aws:iam::{OWN}:role/mirror-role")
