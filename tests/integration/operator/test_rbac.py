"""The operator runs with exactly the RBAC rules the chart is to grant (least privilege), nothing more."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration

FORBIDDEN = re.compile(r"\b(403|Forbidden)\b")

# The operator's own needs (the tls package's Secret rules come on top in auto mode).
OPERATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["podiam.io"], "resources": ["podrolebindings"], "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["podiam.io"], "resources": ["podrolebindings/status"], "verbs": ["patch"]},
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["get", "list", "watch", "patch", "create"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
]

NAMESPACE_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["podiam-status"], "verbs": ["get", "update"]},
]


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("rbac"), nodes=1)
    try:
        running.start(operator=False)
        cp = controlplane
        cp.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "podiam-operator-test"}, "rules": OPERATOR_RULES})
        cp.api("POST", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "podiam-operator-test"}})
        cp.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "podiam-operator-test"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "podiam-operator-test"},
            "subjects": [{"kind": "ServiceAccount", "name": "podiam-operator-test", "namespace": stacks.PROXY_NAMESPACE}]})
        # The chart's namespaced Role: the status ConfigMap kubectl podiam reads, in the operator's namespace only.
        cp.api("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{stacks.PROXY_NAMESPACE}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "podiam-operator-test"}, "rules": NAMESPACE_RULES})
        cp.api("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{stacks.PROXY_NAMESPACE}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "podiam-operator-test"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "podiam-operator-test"},
            "subjects": [{"kind": "ServiceAccount", "name": "podiam-operator-test", "namespace": stacks.PROXY_NAMESPACE}]})
        kubeconfig = cp.kubeconfig_for_service_account(stacks.PROXY_NAMESPACE, "podiam-operator-test")
        running.start_operator(env={"KUBECONFIG": str(kubeconfig), "PODIAM_PEERING_NAME": "podiam-rbac-test"})
        running.wait_proxies_ready()
        yield running
    finally:
        running.stop()
        for path in ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/podiam-operator-test",
                     "/apis/rbac.authorization.k8s.io/v1/clusterroles/podiam-operator-test",
                     f"/apis/rbac.authorization.k8s.io/v1/namespaces/{stacks.PROXY_NAMESPACE}/rolebindings/podiam-operator-test",
                     f"/apis/rbac.authorization.k8s.io/v1/namespaces/{stacks.PROXY_NAMESPACE}/roles/podiam-operator-test"):
            try:
                controlplane.api("DELETE", path)
            except Exception:
                pass


def test_everything_works_with_the_least_privilege_rules(stack: stacks.Stack, ns: str) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "app", role="rbac-role", node=node, ip=ip)
    stack.wait_binding_phase(ns, "app", "Bound")
    stack.wait_credentials(node, ip)
    stacks.wait_for(lambda: stacks.TAINT not in stack.node_taints(node), 30, "taint removed")
    stack.set_permitted(ns, "nothing")
    stack.wait_binding_phase(ns, "app", "Denied")
    stack.wait_event(ns, "Pod", "app", "RoleNotPermitted")
    stack.annotate_pod(ns, "app", {"iam.amazonaws.com/role": None})
    stacks.wait_for(lambda: stack.binding(ns, "app") is None, 20, "pod-owned binding deleted")
    # A whole-word match: ports and ids in the log may contain the digits 403.
    refused = [line for line in stack.operator.log().splitlines() if FORBIDDEN.search(line)]
    assert not refused, "\n".join(refused[-20:])
