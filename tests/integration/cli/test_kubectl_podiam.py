"""``kubectl podiam why|status|who`` on the real stack: every reason a pod gets nothing, as the plugin reports it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localcluster.controlplane import kubelet
from tests.integration.cli.conftest import report, run, wait_report
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration
OWN = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/"
UNREADY_NODE = "cli-node-unready"


def why(stack: stacks.Stack, ns: str, pod: str, until: Any) -> dict[str, Any]:
    return wait_report(stack, "why", pod, "-n", ns, until=until)


def test_served_pod_in_text_and_json(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[0]
    stack.create_pod(ns, "app", role="cli-reader", node=node, ip="auto")
    stack.wait_binding_phase(ns, "app", "Bound")
    found = why(stack, ns, "app", lambda r: r["verdict"] == "served")
    assert found["getsCredentials"] is True
    assert found["decision"]["roleArn"] == OWN + "cli-reader"
    assert [s["source"] for s in found["sources"] if s["decides"]] == ["pod annotation"]
    assert found["policy"]["checked"]["allowed"] is True and found["policy"]["checked"]["matchedAgainst"] == "cli-reader"
    assert found["nodeProxy"]["synced"] is True and found["nodeProxy"]["startupTaint"] is False
    assert found["nodeProxy"]["proxyPod"] == f"podiam-proxy-{node.name}"
    assert found["sts"]["state"] == "ok" and found["sts"]["expiration"]
    assert found["operatorSays"]["phase"] == "Bound" and found["operatorSays"]["agrees"]
    # The level-4 default is refused by this namespace's policy, and the plugin says so.
    cluster = found["sources"][-1]
    assert cluster["names"] == "cluster-default" and "not permitted" in cluster["note"]
    # For people, through KUBECONFIG and the context's namespace-less default: -n given.
    text = run(stack, "why", "app", "-n", ns, env={"KUBECONFIG": str(stack.cp.kubeconfig)})
    assert text.returncode == 0, text.stderr
    assert "Credentials: yes" in text.stdout and "<- decides" in text.stdout
    print(text.stdout)


def test_namespace_without_policy(stack: stacks.Stack) -> None:
    stack.create_namespace("cli-no-policy", None)
    stack.create_pod("cli-no-policy", "app", role="cli-reader", node=stack.nodes[0], ip="auto")
    found = why(stack, "cli-no-policy", "app", lambda r: r["decision"]["outcome"] == "denied")
    assert found["getsCredentials"] is False
    assert found["decision"]["reason"] == "NamespaceNotPermitted"
    assert found["policy"]["permitted"] is None
    assert any("kubectl annotate namespace cli-no-policy iam.amazonaws.com/permitted" in step for step in found["next"])


def test_role_not_permitted_names_the_form_matched(stack: stacks.Stack, ns: str) -> None:
    stack.set_permitted(ns, "app-.*")
    stack.create_pod(ns, "app", role=OWN + "other", node=stack.nodes[0], ip="auto")
    found = why(stack, ns, "app", lambda r: r["decision"]["reason"] == "RoleNotPermitted")
    checked = found["policy"]["checked"]
    assert checked["allowed"] is False and checked["matchedAgainst"] == "other"
    assert found["operatorSays"]["phase"] == "Denied" and found["operatorSays"]["agrees"]


def test_invalid_role(stack: stacks.Stack, ns: str) -> None:
    stack.create_pod(ns, "app", role="team/../admin", node=stack.nodes[0], ip="auto")
    found = why(stack, ns, "app", lambda r: r["decision"]["outcome"] == "error")
    assert found["decision"]["reason"] == "InvalidRole"
    assert "'..' path segments" in found["decision"]["message"]


def test_conflict_names_the_bindings(stack: stacks.Stack, ns: str) -> None:
    stack.apply_binding(ns, "writers", {"role": "cli-writer", "podSelector": {"matchLabels": {"app": "x"}}})
    stack.create_pod(ns, "app", role="cli-reader", labels={"app": "x"}, node=stack.nodes[0], ip="auto")
    found = why(stack, ns, "app", lambda r: r["decision"]["outcome"] == "conflict")
    assert set(found["decision"]["bindings"]) == {"app", "writers"}
    assert {b["name"] for b in found["bindings"]} == {"app", "writers"}
    assert any("writers" in step for step in found["next"])


def test_host_network_pod(stack: stacks.Stack, ns: str) -> None:
    stack.create_pod(ns, "app", role="cli-reader", node=stack.nodes[0], ip="auto", host_network=True)
    found = why(stack, ns, "app", lambda r: r["decision"]["outcome"] == "denied")
    assert found["decision"]["reason"] == "HostNetwork" and found["hostNetwork"] is True


def test_mirror_pod(stack: stacks.Stack, ns: str) -> None:
    # As a kubelet posts a static pod's mirror: bound to its node from the start (the API server insists).
    manifest = stack.pod_manifest(ns, "app", role="cli-reader", annotations={"kubernetes.io/config.mirror": "abc"})
    manifest["spec"]["nodeName"] = stack.nodes[0].name
    stack.cp.api("POST", f"/api/v1/namespaces/{ns}/pods", manifest)
    stack.set_ip(ns, "app", stack.next_ip())
    found = why(stack, ns, "app", lambda r: r["decision"]["outcome"] == "denied")
    assert found["decision"]["reason"] == "MirrorPod" and found["mirror"] is True


def test_no_role(stack: stacks.Stack, ns: str) -> None:
    stack.create_pod(ns, "app", node=stack.nodes[0], ip="auto")
    found = report(stack, "why", "app", "-n", ns)
    assert found["verdict"] == "no-role" and found["getsCredentials"] is False
    assert all(not s["decides"] for s in found["sources"])


def test_serviceaccount_role_decides(stack: stacks.Stack, ns: str) -> None:
    stack.cp.api("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": "irsa", "annotations": {"eks.amazonaws.com/role-arn": OWN + "cli-irsa"}}})
    manifest = stack.pod_manifest(ns, "app")
    manifest["spec"]["serviceAccountName"] = "irsa"
    stack.cp.api("POST", f"/api/v1/namespaces/{ns}/pods", manifest)
    kubelet.bind_pod(stack.cp, ns, "app", stack.nodes[1].name)
    stack.set_ip(ns, "app", stack.next_ip())
    found = why(stack, ns, "app", lambda r: r["verdict"] == "served")
    assert [s["level"] for s in found["sources"] if s["decides"]] == [2]
    assert found["decision"]["roleArn"] == OWN + "cli-irsa"


def test_node_whose_proxy_is_not_ready(stack: stacks.Stack, ns: str) -> None:
    kubelet.create_node(stack.cp, UNREADY_NODE, "127.0.0.250", taints=[f"{stacks.TAINT}:NoSchedule"])
    stack.create_pod(ns, "app", role="cli-reader")
    kubelet.bind_pod(stack.cp, ns, "app", UNREADY_NODE)
    stack.set_ip(ns, "app", stack.next_ip())
    found = why(stack, ns, "app", lambda r: r["verdict"] == "node-not-ready")
    assert found["getsCredentials"] is False
    assert found["nodeProxy"]["startupTaint"] is True and found["nodeProxy"]["proxyPod"] is None
    assert found["nodeProxy"]["synced"] is False
    status = wait_report(stack, "status", until=lambda r: UNREADY_NODE in r["taintedNodes"])
    assert UNREADY_NODE in status["taintedNodes"]


def test_sts_error(stack: stacks.Stack, ns: str) -> None:
    stack.sts.set_faults(deny_roles=".*cli-denied.*")
    try:
        stack.create_pod(ns, "app", role="cli-denied", node=stack.nodes[1], ip="auto")
        found = why(stack, ns, "app", lambda r: r["verdict"] == "sts-error")
        assert found["sts"]["state"] == "failed" and found["sts"]["reason"] == "AccessDenied"
        assert any("trust" in step for step in found["next"])
        text = run(stack, "why", "app", "-n", ns)
        assert text.returncode == 0 and "Credentials: NO" in text.stdout and "AccessDenied" in text.stdout
        print(text.stdout)
        status = wait_report(stack, "status", until=lambda r: any(x["roleArn"] == OWN + "cli-denied" for x in r["roles"]))
        denied = next(x for x in status["roles"] if x["roleArn"] == OWN + "cli-denied")
        assert denied["state"] == "failed" and denied["reason"] == "AccessDenied"
    finally:
        stack.sts.clear_faults()


def test_status(stack: stacks.Stack, ns: str) -> None:
    stack.create_pod(ns, "app", role="cli-status", node=stack.nodes[0], ip="auto")
    stack.wait_binding_phase(ns, "app", "Bound")
    found = wait_report(stack, "status", until=lambda r: any(x["roleArn"] == OWN + "cli-status" and x["state"] == "ok"
                                                             for x in r["roles"]))
    operator = found["operator"]
    assert operator["activeReplica"] == "operator-1" and operator["phase"] == "active" and not operator["stale"]
    assert [r["identity"] for r in operator["replicas"] if r["alive"]] == ["operator-1"]
    assert operator["baseArn"] == OWN
    assert found["tls"]["ok"] is True and found["tls"]["clientCertificateExpires"] and found["tls"]["caExpires"]
    nodes = {n["node"]: n for n in found["nodes"]}
    for node in stack.nodes:
        assert nodes[node.name]["synced"] is True and nodes[node.name]["lastPush"] and nodes[node.name]["startupTaint"] is False
    assert found["bindings"]["byPhase"].get("Bound", 0) >= 1
    text = run(stack, "status")
    assert text.returncode == 0, text.stderr
    assert "Operator: active operator-1" in text.stdout and "cli-status" in text.stdout
    print(text.stdout)


def test_who(stack: stacks.Stack, ns: str) -> None:
    stack.create_pod(ns, "holder", role="cli-who", node=stack.nodes[1], ip="auto")
    stack.create_namespace("cli-who-refused", "nothing")
    stack.create_pod("cli-who-refused", "asker", role="cli-who", node=stack.nodes[0], ip="auto")
    stack.wait_binding_phase(ns, "holder", "Bound")
    found = wait_report(stack, "who", "cli-who", until=lambda r: any(h.get("served") for h in r["holds"]))
    assert found["roleArn"] == OWN + "cli-who"
    assert [(h["pod"], h["node"], h["served"]) for h in found["holds"]] == [(f"{ns}/holder", stack.nodes[1].name, True)]
    assert [(r["pod"], r["reason"]) for r in found["refused"]] == [("cli-who-refused/asker", "RoleNotPermitted")]
    assert ns in found["permittedIn"] and "cli-who-refused" not in found["permittedIn"]
    text = run(stack, "who", "cli-who")
    assert text.returncode == 0 and f"{ns}/holder" in text.stdout


def test_missing_pod_is_an_error(stack: stacks.Stack, ns: str) -> None:
    result = run(stack, "why", "nobody", "-n", ns, "-o", "json")
    assert result.returncode == 1 and "not found" in json.loads(result.stdout)["error"]
