"""Every source of roles on the real stack: bindings by ServiceAccount, IRSA's ServiceAccount annotation, the
namespace's and the cluster's default roles, kube2iam's allowed-roles, per-binding intermediate roles and session
tags. Each is served to the pod it is for, goes through the namespace policy, and is revoked at once when it goes.

The operator runs with --irsa-service-accounts, --default-role cluster-default and --cluster-name; the namespaces
here permit every role of the operator's account but the cluster's default (each test that wants it says so), so a
revoked pod falls to nothing rather than to the default.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.controlplane import ApiError, ControlPlane, kubelet
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration
OWN = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/"
FOREIGN = "arn:aws:iam::999999999999:role/"
POLICY = "(?!cluster-default$)[^:]*"  # this account's roles, the cluster's default excepted
CLUSTER = "integration-cluster"
REVOKED_WITHIN = 5.0  # seconds: "at once", with the machine's load
_names = itertools.count()


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("sources"), nodes=2, operator_env={
        "PODIAM_IRSA_SERVICE_ACCOUNTS": "true", "PODIAM_DEFAULT_ROLE": "cluster-default", "PODIAM_CLUSTER_NAME": CLUSTER,
    })
    try:
        running.start()
        yield running
    except BaseException:
        running.print_operator_logs()
        raise
    finally:
        running.stop()


@pytest.fixture
def ns(stack: stacks.Stack, request: pytest.FixtureRequest) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"s{next(_names)}-{slug}"
    stack.create_namespace(name, POLICY)
    return name


def service_account(stack: stacks.Stack, ns: str, name: str, role: str | None = None) -> None:
    annotations = {"eks.amazonaws.com/role-arn": role} if role else {}
    stack.cp.api("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "annotations": annotations}})


def annotate(stack: stacks.Stack, path: str, annotations: dict[str, str | None]) -> None:
    stack.cp.api("PATCH", path, {"metadata": {"annotations": annotations}})


def pod_as(stack: stacks.Stack, ns: str, name: str, account: str, node: stacks.Node, *, role: str | None = None,
           labels: dict[str, str] | None = None) -> str:
    """A Running pod of ServiceAccount ``account`` on ``node``; its IP."""
    manifest = stack.pod_manifest(ns, name, role=role, labels=labels)
    manifest["spec"]["serviceAccountName"] = account
    stack.cp.api("POST", f"/api/v1/namespaces/{ns}/pods", manifest)
    kubelet.bind_pod(stack.cp, ns, name, node.name)
    ip = stack.next_ip()
    stack.set_ip(ns, name, ip)
    return ip


def role_served(stack: stacks.Stack, node: stacks.Node, ip: str) -> str:
    """The role whose credentials the pod reads, by the key STS issued (not by the name the proxy lists)."""
    document = stack.wait_credentials(node, ip)
    return stack.sts.issued_keys()[document["AccessKeyId"]]


def wait_role(stack: stacks.Stack, node: stacks.Node, ip: str, arn: str, timeout: float = 30.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        document = stack.credentials(node, ip)
        return document if document and stack.sts.issued_keys().get(document["AccessKeyId"]) == arn else None

    return stacks.wait_for(check, timeout, f"{ip} served {arn}")


@pytest.fixture(autouse=True)
def _calls_before(stack: stacks.Stack) -> None:
    """The STS front serves the whole session (tests/fault assumes foreign roles on purpose): mark where this test starts."""
    global _CALLS_BEFORE
    _CALLS_BEFORE = len(stack.sts.assume_role_calls())


_CALLS_BEFORE = 0


def never_assumed(stack: stacks.Stack, *arns: str) -> None:
    """None of ``arns`` assumed since this test started."""
    time.sleep(1.0)  # whatever the operator was going to call has been called
    calls = {c["RoleArn"] for c in stack.sts.assume_role_calls()[_CALLS_BEFORE:]}
    assert not calls & set(arns), calls


# --- PodRoleBindings by ServiceAccount -----------------------------------------------------------------


def test_a_binding_by_service_account_serves_its_pods_and_stops_when_it_no_longer_matches(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[0]
    for account in ("app", "other"):
        service_account(stack, ns, account)
    app_ip, other_ip = pod_as(stack, ns, "app-1", "app", node), pod_as(stack, ns, "other-1", "other", node)
    stack.apply_binding(ns, "by-sa", {"role": "sa-binding-role", "serviceAccountName": "app"})
    assert stack.wait_binding_phase(ns, "by-sa", "Bound")["status"]["pods"] == 1
    assert role_served(stack, node, app_ip) == OWN + "sa-binding-role"
    assert stack.imds(node, other_ip).status == 404
    stack.cp.api("PATCH", f"/apis/podiam.io/v1alpha1/namespaces/{ns}/podrolebindings/by-sa", {"spec": {"serviceAccountName": "other"}})
    stack.wait_no_credentials(node, app_ip, timeout=REVOKED_WITHIN)
    assert role_served(stack, node, other_ip) == OWN + "sa-binding-role"


def test_labels_and_service_account_together_select_pods_matching_both(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[1]
    service_account(stack, ns, "web")
    web_ip = pod_as(stack, ns, "web-1", "web", node, labels={"tier": "front"})
    back_ip = pod_as(stack, ns, "web-2", "web", node, labels={"tier": "back"})
    stack.apply_binding(ns, "front", {"role": "front-role", "serviceAccountName": "web",
                                      "podSelector": {"matchLabels": {"tier": "front"}}})
    assert role_served(stack, node, web_ip) == OWN + "front-role"
    assert stack.wait_binding_phase(ns, "front", "Bound")["status"]["pods"] == 1
    assert stack.imds(node, back_ip).status == 404


def test_an_annotation_and_a_binding_by_service_account_naming_different_roles_conflict(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[1]
    service_account(stack, ns, "both")
    ip = pod_as(stack, ns, "both-1", "both", node, role="annotated-role")
    stack.apply_binding(ns, "by-sa", {"role": "sa-bound-role", "serviceAccountName": "both"})
    for name in ("both-1", "by-sa"):
        body = stack.wait_binding_phase(ns, name, "Conflict")
        assert "annotated-role" in body["status"]["message"] and "sa-bound-role" in body["status"]["message"]
    stack.wait_event(ns, "Pod", "both-1", "ConflictingBindings")
    assert stack.imds(node, ip).status == 404
    stack.annotate_pod(ns, "both-1", {"iam.amazonaws.com/role": None})  # one source left: no conflict
    wait_role(stack, node, ip, OWN + "sa-bound-role", timeout=REVOKED_WITHIN)
    assert stack.wait_binding_phase(ns, "by-sa", "Bound")["status"]["pods"] == 1


# --- IRSA's ServiceAccount annotation ------------------------------------------------------------------


def test_an_irsa_service_account_gives_its_pods_the_role_and_losing_it_revokes_at_once(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[0]
    service_account(stack, ns, "irsa-app", OWN + "irsa-app-role")
    ip = pod_as(stack, ns, "irsa-1", "irsa-app", node)
    document = wait_role(stack, node, ip, OWN + "irsa-app-role")
    assert stacks.caller_identity(stack.sts.url, document)["Arn"].startswith(
        f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/irsa-app-role/")
    path = f"/api/v1/namespaces/{ns}/serviceaccounts/irsa-app"
    annotate(stack, path, {"eks.amazonaws.com/role-arn": None})
    stack.wait_no_credentials(node, ip, timeout=REVOKED_WITHIN)
    annotate(stack, path, {"eks.amazonaws.com/role-arn": OWN + "irsa-app-role"})
    wait_role(stack, node, ip, OWN + "irsa-app-role")
    stack.cp.api("DELETE", path)  # the pod outlives its ServiceAccount: the role does not
    stack.wait_no_credentials(node, ip, timeout=REVOKED_WITHIN)


def test_an_irsa_role_the_namespace_does_not_permit_is_said_on_the_pod_and_the_service_account(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[1]
    service_account(stack, ns, "sneaky", FOREIGN + "reader")
    ip = pod_as(stack, ns, "sneaky-1", "sneaky", node)
    pod_event = stack.wait_event(ns, "Pod", "sneaky-1", "RoleNotPermitted")
    assert pod_event["message"].startswith("ServiceAccount sneaky's eks.amazonaws.com/role-arn: ")
    assert stack.wait_event(ns, "ServiceAccount", "sneaky", "RoleNotPermitted")["message"] == pod_event["message"]
    assert stack.imds(node, ip).status == 404
    never_assumed(stack, FOREIGN + "reader")


# --- the order, and defaults ---------------------------------------------------------------------------


def test_explicit_roles_win_then_the_service_account_then_the_namespace_default_each_change_at_once(
    stack: stacks.Stack, ns: str,
) -> None:
    node = stack.nodes[0]
    annotate(stack, f"/api/v1/namespaces/{ns}", {"podiam.io/default-role": "namespace-default"})
    service_account(stack, ns, "layered", OWN + "layered-sa-role")
    ip = pod_as(stack, ns, "layered-1", "layered", node, role="layered-pod-role")
    wait_role(stack, node, ip, OWN + "layered-pod-role")
    assert stack.wait_binding_phase(ns, "layered-1", "Bound")["status"]["phase"] == "Bound"  # not a Conflict
    stack.annotate_pod(ns, "layered-1", {"iam.amazonaws.com/role": None})
    wait_role(stack, node, ip, OWN + "layered-sa-role", timeout=REVOKED_WITHIN)
    annotate(stack, f"/api/v1/namespaces/{ns}/serviceaccounts/layered", {"eks.amazonaws.com/role-arn": None})
    wait_role(stack, node, ip, OWN + "namespace-default", timeout=REVOKED_WITHIN)
    annotate(stack, f"/api/v1/namespaces/{ns}", {"podiam.io/default-role": None})
    stack.wait_no_credentials(node, ip, timeout=REVOKED_WITHIN)  # the cluster's default is not permitted here


def test_a_namespace_default_the_namespace_does_not_permit_is_said_on_its_pods(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[1]
    annotate(stack, f"/api/v1/namespaces/{ns}", {"podiam.io/default-role": FOREIGN + "elsewhere"})
    service_account(stack, ns, "plain")
    ip = pod_as(stack, ns, "plain-1", "plain", node)
    event = stack.wait_event(ns, "Pod", "plain-1", "RoleNotPermitted")
    assert event["message"].startswith(f"namespace {ns}'s podiam.io/default-role: ")
    assert stack.imds(node, ip).status == 404
    never_assumed(stack, FOREIGN + "elsewhere")


def test_the_cluster_default_serves_where_the_namespace_permits_it_only_and_the_log_says_where_not(
    stack: stacks.Stack, ns: str,
) -> None:
    node = stack.nodes[0]
    open_ns = f"{ns}-open"
    stack.create_namespace(open_ns, "cluster-default")
    for namespace in (ns, open_ns):
        service_account(stack, namespace, "plain")
    refused_ip, served_ip = pod_as(stack, ns, "plain-1", "plain", node), pod_as(stack, open_ns, "plain-1", "plain", node)
    wait_role(stack, node, served_ip, OWN + "cluster-default")
    assert stack.imds(node, refused_ip).status == 404
    stacks.wait_for(lambda: f"namespace {ns}: the cluster's default role does not apply" in stack.operator.log(), 10,
                    "the log line saying where the cluster's default does not apply")
    time.sleep(1.0)
    assert not [e for e in stack.events(ns, kind="Pod", name="plain-1")], "a pod was told about a default it never asked for"
    stack.set_permitted(open_ns, "other")  # narrowed: revoked
    stack.wait_no_credentials(node, served_ip, timeout=REVOKED_WITHIN)


# --- kube2iam's namespace form ---------------------------------------------------------------------------


def test_kube2iams_allowed_roles_permits_and_narrowing_it_revokes(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[1]
    kube2iam_ns = f"{ns}-k2i"
    stack.create_namespace(kube2iam_ns, None)
    annotate(stack, f"/api/v1/namespaces/{kube2iam_ns}", {"iam.amazonaws.com/allowed-roles": '["app-*"]'})
    ip, other_ip = stack.next_ip(), stack.next_ip()
    stack.create_pod(kube2iam_ns, "app", role="app-reader", node=node, ip=ip)
    stack.create_pod(kube2iam_ns, "other", role=f"{FOREIGN}app-reader", node=node, ip=other_ip)
    wait_role(stack, node, ip, OWN + "app-reader")
    assert "app-*" in stack.wait_binding_phase(kube2iam_ns, "other", "Denied")["status"]["message"]
    annotate(stack, f"/api/v1/namespaces/{kube2iam_ns}", {"iam.amazonaws.com/allowed-roles": '["web-*"]'})
    stack.wait_no_credentials(node, ip, timeout=REVOKED_WITHIN)
    stack.wait_binding_phase(kube2iam_ns, "app", "Denied")


# --- per-binding intermediate roles and session tags ---------------------------------------------------------


def test_an_intermediate_role_is_assumed_first_with_the_tags_transitive_and_its_session_assumes_the_role(
    stack: stacks.Stack, ns: str,
) -> None:
    node = stack.nodes[0]
    service_account(stack, ns, "cross")
    ip = pod_as(stack, ns, "cross-1", "cross", node)
    stack.apply_binding(ns, "cross-account", {
        "role": "chain-target", "intermediateRole": "chain-hop", "serviceAccountName": "cross",
        "sessionTags": {"team": "payments", "cost-center": "42"},
    })
    document = wait_role(stack, node, ip, OWN + "chain-target")
    assert stacks.caller_identity(stack.sts.url, document)["Arn"].startswith(
        f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/chain-target/")
    (hop,) = stack.sts.assume_role_calls(OWN + "chain-hop")
    (target,) = stack.sts.assume_role_calls(OWN + "chain-target")
    assert hop["Tags"] == {"eks-cluster-name": CLUSTER, "cost-center": "42", "team": "payments"}
    assert sorted(hop["TransitiveTagKeys"]) == sorted(hop["Tags"])
    # The role was assumed with the intermediate role's credentials, and its tags came along (not sent again).
    assert stack.sts.issued_keys()[target["Caller"]] == OWN + "chain-hop"
    assert target["Tags"] == {} and target["TransitiveTagKeys"] == []


def test_the_crd_refuses_a_chained_session_longer_than_sts_allows(stack: stacks.Stack, ns: str) -> None:
    with pytest.raises(ApiError) as refused:
        stack.apply_binding(ns, "too-long", {"role": "target", "intermediateRole": "hop", "sessionDuration": 7200,
                                             "serviceAccountName": "x"})
    assert refused.value.status == 422 and "at most 3600 seconds (STS role chaining)" in str(refused.value)


def test_the_operators_tags_cannot_be_set_by_a_binding(stack: stacks.Stack, ns: str) -> None:
    service_account(stack, ns, "victim")
    stack.apply_binding(ns, "impostor", {"role": "impostor-role", "serviceAccountName": "victim",
                                         "sessionTags": {"Kubernetes-Namespace": "kube-system"}})
    body = stack.wait_binding_phase(ns, "impostor", "Error")
    assert body["status"]["conditions"][0]["reason"] == "ReservedSessionTag"
    assert "'Kubernetes-Namespace' is set by the operator" in body["status"]["message"]
    stack.wait_event(ns, "PodRoleBinding", "impostor", "ReservedSessionTag")
    never_assumed(stack, OWN + "impostor-role")


def test_an_intermediate_role_the_namespace_does_not_permit_is_denied(stack: stacks.Stack, ns: str) -> None:
    stack.apply_binding(ns, "hop-elsewhere", {"role": "target-role", "intermediateRole": f"{FOREIGN}hop",
                                              "podSelector": {"matchLabels": {"app": "x"}}})
    body = stack.wait_binding_phase(ns, "hop-elsewhere", "Denied")
    assert body["status"]["message"].startswith(f"spec.intermediateRole: role {FOREIGN}hop is not permitted")
    never_assumed(stack, f"{FOREIGN}hop", OWN + "target-role")


def test_tags_off_and_the_cluster_name_on_shared_sessions(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[1]
    tagged_ip, untagged_ip = stack.next_ip(), stack.next_ip()
    stack.create_pod(ns, "tagged", role="tagged-role", node=node, ip=tagged_ip)
    stack.create_pod(ns, "untagged", labels={"tags": "off"}, node=node, ip=untagged_ip)
    stack.apply_binding(ns, "off", {"role": "untagged-role", "disableSessionTags": True,
                                    "podSelector": {"matchLabels": {"tags": "off"}}})
    wait_role(stack, node, tagged_ip, OWN + "tagged-role")
    wait_role(stack, node, untagged_ip, OWN + "untagged-role")
    assert [c["Tags"] for c in stack.sts.assume_role_calls(OWN + "tagged-role")] == [{"eks-cluster-name": CLUSTER}]
    assert [c["Tags"] for c in stack.sts.assume_role_calls(OWN + "untagged-role")] == [{}]
