"""Namespace policy, revocation paths, user bindings, conflicts, hostNetwork, STS failures."""

from __future__ import annotations

import re

import pytest

from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration


def test_namespace_without_permitted_denies_then_grants_then_revokes(stack: stacks.Stack) -> None:
    ns = "policy-absent"
    stack.create_namespace(ns, permitted=None)
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "app", role="ns-role", node=node, ip=ip)
    binding = stack.wait_binding_phase(ns, "app", "Denied")
    assert "iam.amazonaws.com/permitted" in binding["status"]["message"]
    stack.wait_event(ns, "PodRoleBinding", "app", "NamespaceNotPermitted")
    stack.wait_event(ns, "Pod", "app", "NamespaceNotPermitted")
    assert stack.imds(node, ip).status == 404
    # Granting the role in the namespace serves the pod...
    stack.set_permitted(ns, "ns-.*")
    stack.wait_binding_phase(ns, "app", "Bound")
    stack.wait_credentials(node, ip)
    # ...and narrowing the regex revokes at once. Anchored: "ns" does not permit "ns-role".
    stack.set_permitted(ns, "ns")
    stack.wait_no_credentials(node, ip, timeout=10)
    binding = stack.wait_binding_phase(ns, "app", "Denied")
    assert binding["status"]["conditions"][0]["reason"] == "RoleNotPermitted"


def test_invalid_regex_denies_and_is_reported(stack: stacks.Stack) -> None:
    ns = "policy-invalid"
    stack.create_namespace(ns, permitted="bad(")
    stack.create_pod(ns, "app", role="x", node=stack.nodes[0], ip=stack.next_ip())
    binding = stack.wait_binding_phase(ns, "app", "Denied")
    assert "not a valid regex" in binding["status"]["message"]
    stack.wait_event(ns, "PodRoleBinding", "app", "InvalidPermittedRegex")


@pytest.mark.parametrize("how", ["annotation-removed", "pod-deleted", "pod-terminating", "pod-succeeded", "pod-failed"])
def test_revocation(stack: stacks.Stack, ns: str, how: str) -> None:
    node, ip = stack.nodes[1], stack.next_ip()
    stack.create_pod(ns, "gone", role="revoked-role", node=node, ip=ip)
    stack.wait_credentials(node, ip)
    if how == "annotation-removed":
        stack.annotate_pod(ns, "gone", {"iam.amazonaws.com/role": None})
    elif how == "pod-deleted":
        stack.delete_pod(ns, "gone")
    elif how == "pod-terminating":
        stack.delete_pod(ns, "gone", grace_period=30)  # stays Terminating: no kubelet finishes it
    else:
        stack.finish_pod(ns, "gone", "Succeeded" if how == "pod-succeeded" else "Failed")
    stack.wait_no_credentials(node, ip, timeout=10)
    if how == "annotation-removed":
        stacks.wait_for(lambda: stack.binding(ns, "gone") is None, 20, "pod-owned binding deleted")


def test_user_binding_selects_pods_and_its_deletion_revokes(stack: stacks.Stack, ns: str) -> None:
    node, ip, other_ip = stack.nodes[0], stack.next_ip(), stack.next_ip()
    stack.apply_binding(ns, "web", {"role": "web-role", "podSelector": {"matchLabels": {"app": "web"}}})
    stack.create_pod(ns, "web-1", labels={"app": "web"}, node=node, ip=ip)
    stack.create_pod(ns, "db-1", labels={"app": "db"}, node=node, ip=other_ip)
    binding = stack.wait_binding_phase(ns, "web", "Bound")
    assert binding["status"]["pods"] == 1
    assert stack.wait_credentials(node, ip)["RoleName"] == "web-role"
    assert stack.imds(node, other_ip).status == 404
    stack.delete_binding(ns, "web")
    stack.wait_no_credentials(node, ip, timeout=10)


def test_binding_without_selector_is_an_error(stack: stacks.Stack, ns: str) -> None:
    stack.apply_binding(ns, "noselector", {"role": "x"})
    binding = stack.wait_binding_phase(ns, "noselector", "Error")
    assert "spec.podSelector or spec.serviceAccountName is needed" in binding["status"]["message"]


def test_conflict_reports_on_every_binding_and_serves_nothing(stack: stacks.Stack, ns: str) -> None:
    node, ip = stack.nodes[1], stack.next_ip()
    stack.apply_binding(ns, "web", {"role": "web-role", "podSelector": {"matchLabels": {"app": "web"}}})
    stack.create_pod(ns, "both", role="other-role", labels={"app": "web"}, node=node, ip=ip)
    for name in ("web", "both"):
        binding = stack.wait_binding_phase(ns, name, "Conflict")
        assert "web-role" in binding["status"]["message"] and "other-role" in binding["status"]["message"]
    stack.wait_event(ns, "Pod", "both", "ConflictingBindings")
    assert stack.imds(node, ip).status == 404
    # Resolving the conflict serves the remaining role.
    stack.delete_binding(ns, "web")
    assert stack.wait_credentials(node, ip)["RoleName"] == "other-role"
    stack.wait_binding_phase(ns, "both", "Bound")


def test_host_network_pods_are_served_on_the_container_credentials_path_only(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[0]
    stack.create_pod(ns, "hostnet", role="x", node=node, ip="auto", host_network=True)
    stack.wait_binding_phase(ns, "hostnet", "Bound")
    event = stack.wait_event(ns, "Pod", "hostnet", "ContainerCredentialsOnly")
    assert "hostNetwork" in event["message"] and "169.254.170.23" in event["message"]
    # Never by IP: the node's address is no pod's (tests/integration/proxy/test_container_credentials.py reads it by token).
    assert stack.imds(node, node.ip).status == 404


def test_many_pods_one_role_one_assume_role(stack: stacks.Stack, ns: str) -> None:
    arn = "arn:aws:iam::123456789012:role/shared-role"
    before = stack.sts.assume_role_count(arn)
    pods = [(f"p{i}", stack.nodes[i % 2], stack.next_ip()) for i in range(12)]
    for name, node, ip in pods:
        stack.create_pod(ns, name, role="shared-role", node=node, ip=ip)
    for name, node, ip in pods:
        assert stack.wait_credentials(node, ip)["RoleName"] == "shared-role"
    assert stack.sts.assume_role_count(arn) - before == 1


def test_access_denied_is_reported_and_retried_without_affecting_others(stack: stacks.Stack, ns: str) -> None:
    sts: moto.StsFront = stack.sts
    sts.set_faults(deny_roles=r".*:role/denied-role")
    try:
        node, ip, ok_ip = stack.nodes[0], stack.next_ip(), stack.next_ip()
        stack.create_pod(ns, "denied", role="denied-role", node=node, ip=ip)
        stack.create_pod(ns, "fine", role="fine-role", node=node, ip=ok_ip)
        binding = stack.wait_binding_phase(ns, "denied", "Error")
        assert binding["status"]["conditions"][0]["reason"] == "AccessDenied"
        assert "not authorized" in binding["status"]["message"]
        stack.wait_event(ns, "PodRoleBinding", "denied", "AccessDenied")
        stack.wait_event(ns, "Pod", "denied", "AssumeRoleFailed")
        assert stack.wait_credentials(node, ok_ip)["RoleName"] == "fine-role"
        assert stack.imds(node, ip).status == 404
    finally:
        sts.clear_faults()
    # Retried later (first retry after a few seconds): the pod gets its role.
    stack.wait_binding_phase(ns, "denied", "Bound", timeout=40)
    stack.wait_credentials(node, ip)


def assume_role_results(stack: stacks.Stack) -> dict[str, float]:
    """The operator's ``podiam_sts_calls_total`` for AssumeRole, by result (ok or the error code)."""
    return {result: float(value) for result, value in re.findall(
        r'^podiam_sts_calls_total\{action="AssumeRole",result="([^"]+)"\} ([0-9.e+]+)$', stack.operator_metrics(), re.M)}


def test_throttling_is_retried(stack: stacks.Stack, ns: str) -> None:
    role_arn = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/throttled-role"
    injected = stack.sts.stats()["injected"].get("Throttling", 0)
    results = assume_role_results(stack)
    # The role's first two AssumeRole calls are throttled, for certain; nothing else is.
    stack.sts.set_faults(fail_first=2, fail_roles=re.escape(role_arn), error_status=400, error_code="Throttling")
    try:
        node, ip = stack.nodes[1], stack.next_ip()
        stack.create_pod(ns, "throttled", role="throttled-role", node=node, ip=ip)
        stack.wait_credentials(node, ip, timeout=40)
    finally:
        stack.sts.clear_faults()
    # The front throttled two calls and forwarded the third, whose credentials the pod got; the operator
    # counted both throttles and the success.
    assert stack.sts.stats()["injected"].get("Throttling", 0) - injected == 2
    assert len(stack.sts.assume_role_calls(role_arn)) == 1
    after = assume_role_results(stack)
    assert after.get("Throttling", 0) - results.get("Throttling", 0) == 2, after
    assert after.get("ok", 0) - results.get("ok", 0) >= 1, after
    stack.wait_binding_phase(ns, "throttled", "Bound")


def test_deleted_pod_owned_binding_is_recreated_while_the_annotation_stays(stack: stacks.Stack, ns: str) -> None:
    # The annotation is the source of truth for pod-owned bindings (like a
    # ReplicaSet's pods): deleting the binding does not revoke, removing the
    # annotation does (test_revocation).
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "owned", role="owned-role", node=node, ip=ip)
    first = stack.wait_binding_phase(ns, "owned", "Bound")
    stack.delete_binding(ns, "owned")
    second = stacks.wait_for(
        lambda: (b := stack.binding(ns, "owned")) and b["metadata"]["uid"] != first["metadata"]["uid"] and b, 20, "recreated")
    assert second["spec"]["role"] == "owned-role"
    stack.wait_binding_phase(ns, "owned", "Bound")
    stack.wait_credentials(node, ip)
