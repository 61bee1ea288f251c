"""Annotation to credentials, per-node strictness, the AWS CLI, the taint, the CRD's validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcluster.controlplane import KubectlError
from localcluster import stack as stacks

pytestmark = pytest.mark.integration
ACCOUNT = "123456789012"


def test_annotation_binds_and_only_the_pods_node_serves(stack: stacks.Stack, ns: str) -> None:
    node, other = stack.nodes[0], stack.nodes[1]
    ip = stack.next_ip()
    stack.create_pod(ns, "app", role="app-role", node=node, ip=ip)
    binding = stack.wait_binding_phase(ns, "app", "Bound")
    assert binding["status"]["roleArn"] == f"arn:aws:iam::{ACCOUNT}:role/app-role"
    assert binding["status"]["pods"] == 1
    assert binding["status"]["expiration"]
    assert binding["metadata"]["ownerReferences"][0]["kind"] == "Pod"
    credentials = stack.wait_credentials(node, ip)
    assert credentials["RoleName"] == "app-role"
    assert credentials["Code"] == "Success"
    # The other node's proxy knows nothing of this pod.
    assert stack.imds(other, ip).status == 404
    # No secret in the binding.
    assert credentials["SecretAccessKey"] not in json.dumps(binding)
    assert credentials["Token"] not in json.dumps(binding)


def test_the_external_id_annotation_reaches_assume_role(stack: stacks.Stack, ns: str) -> None:
    """The annotation's value is the ExternalId of the AssumeRole call STS receives; a pod without one sends none,
    and does not share the other pod's credentials (another STS call)."""
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/external-id-role"
    node = stack.nodes[0]
    with_id, without_id = stack.next_ip(), stack.next_ip()
    stack.create_pod(ns, "with-id", role="external-id-role", node=node, ip=with_id,
                     annotations={"iam.amazonaws.com/external-id": "ext-7f3a-tenant"})
    stack.create_pod(ns, "without-id", role="external-id-role", node=node, ip=without_id)
    served = stack.wait_credentials(node, with_id)["AccessKeyId"], stack.wait_credentials(node, without_id)["AccessKeyId"]
    assert served[0] != served[1]
    calls = stack.sts.assume_role_calls(role_arn)
    assert sorted((call["ExternalId"] or "") for call in calls) == ["", "ext-7f3a-tenant"], calls
    issued = stack.sts.issued_keys()
    assert issued[served[0]] == issued[served[1]] == role_arn


def test_aws_cli_sees_the_assumed_role(stack: stacks.Stack, ns: str, tmp_path: Path) -> None:
    node = stack.nodes[1]
    ip = stack.next_ip()
    stack.create_pod(ns, "cli", role="cli-role", node=node, ip=ip)
    credentials = stack.wait_credentials(node, ip)
    identity = stacks.caller_identity(stack.sts.url, credentials)
    assert identity["Arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/cli-role/")


def test_start_up_taint_is_removed_once_the_proxy_is_synced(stack: stacks.Stack) -> None:
    for node in stack.nodes:
        stacks.wait_for(lambda node=node: stacks.TAINT not in stack.node_taints(node), 30, f"taint gone from {node.name}")  # type: ignore[misc]


def test_kopf_never_writes_to_pods_or_namespaces(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[0]
    ip = stack.next_ip()
    stack.create_pod(ns, "untouched", role="r1", node=node, ip=ip)
    stack.wait_binding_phase(ns, "untouched", "Bound")
    pod = stack.cp.api("GET", f"/api/v1/namespaces/{ns}/pods/untouched")
    namespace = stack.cp.api("GET", f"/api/v1/namespaces/{ns}")
    for obj in (pod, namespace):
        meta = obj["metadata"]
        assert not [k for k in (meta.get("annotations") or {}) if "kopf" in k], meta.get("annotations")
        assert not [f for f in (meta.get("finalizers") or []) if "kopf" in f or "podiam" in f]
        assert not [m for m in meta.get("managedFields", []) if m.get("manager", "").startswith(("kopf", "podiam", "python"))], \
            meta.get("managedFields")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"role": "not a role"}, "spec.role"),
        ({"role": "arn:aws:iam::12:role/x"}, "spec.role"),
        ({"role": "ok", "podSelector": {"matchLabels": {"a": "!"}}}, "matchLabels"),
        ({"role": "ok", "podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}, "operator"),
        ({"role": "ok", "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "values"),
        ({"role": "ok", "sessionDuration": 60}, "sessionDuration"),
        ({"role": "ok", "podSelector": "app=web"}, "podSelector"),
        ({"role": "ok", "extra": 1}, "extra"),
    ],
)
def test_crd_rejects_malformed_bindings_at_apply_time(stack: stacks.Stack, ns: str, spec: dict[str, object], message: str) -> None:
    manifest = json.dumps({"apiVersion": "podiam.io/v1alpha1", "kind": "PodRoleBinding",
                           "metadata": {"name": "bad", "namespace": ns}, "spec": spec})
    with pytest.raises(KubectlError) as error:
        stack.cp.kubectl("apply", "-f", "-", input=manifest)
    assert message in str(error.value), str(error.value)


def test_printer_columns(stack: stacks.Stack, ns: str) -> None:
    ip = stack.next_ip()
    stack.create_pod(ns, "shown", role="shown-role", node=stack.nodes[0], ip=ip)
    stack.wait_binding_phase(ns, "shown", "Bound")
    out = stack.cp.kubectl("get", "prb", "-n", ns)
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "ROLE", "PHASE", "PODS", "EXPIRES", "AGE"]
    assert row.split()[:4] == ["shown", "shown-role", "Bound", "1"]


def test_metrics_and_no_secrets_in_logs(stack: stacks.Stack, ns: str) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "metered", role="metered-role", node=node, ip=ip)
    credentials = stack.wait_credentials(node, ip)
    stack.wait_binding_phase(ns, "metered", "Bound")
    text = stack.operator_metrics()
    for name in ("podiam_sts_calls_total", "podiam_sts_call_seconds_bucket", "podiam_credentials_cached",
                 "podiam_credential_cache_lookups_total", "podiam_pushes_total", "podiam_push_seconds_bucket", "podiam_bindings"):
        assert name in text, name
    assert 'podiam_sts_calls_total{action="AssumeRole",result="ok"}' in text
    assert 'podiam_bindings{phase="Bound"}' in text
    log = "".join(p.log() for p in stack.operators)
    assert credentials["SecretAccessKey"] not in log
    assert credentials["Token"] not in log
