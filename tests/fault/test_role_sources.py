"""The new sources of roles under the faults the annotation is tested against: IP reuse in every order, and
revocations made while the operator's watches expire behind a cut-off (a ServiceAccount deleted or stripped of its
annotation, a namespace default removed, a binding's ServiceAccount changed, kube2iam's list narrowed); and a
tenant's binding never reaches another namespace's pods by ServiceAccount name.

Real stack: the control plane (the operator reaches it through a TcpGate), moto STS behind the counting front, the
operator with --irsa-service-accounts and two proxies as processes; every answer from a pod's IP is judged by the
shared invariant checker.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane, kubelet
from localcluster import invariants, moto
from tests.support import tcpgate
from localcluster import stack as stacks

pytestmark = pytest.mark.fault
OWN = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/"
RECOVERY_BOUND = 15.0  # seconds from reconnection to every change applied (as tests/fault/test_apiserver.py)


@pytest.fixture(scope="module")
def gate(controlplane: ControlPlane) -> Iterator[tcpgate.TcpGate]:
    url = urllib.parse.urlparse(controlplane.server)
    assert url.hostname and url.port
    with tcpgate.TcpGate((url.hostname, url.port)) as running:
        yield running


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory,
          gate: tcpgate.TcpGate) -> Iterator[stacks.Stack]:
    workdir = tmp_path_factory.mktemp("fault-sources")
    kubeconfig = workdir / "operator-kubeconfig"
    kubeconfig.write_text(controlplane.kubeconfig.read_text().replace(controlplane.server, f"https://{gate.address}"))
    running = stacks.Stack(controlplane, sts, workdir, nodes=2, operator_env={
        "KUBECONFIG": str(kubeconfig), "PODIAM_IRSA_SERVICE_ACCOUNTS": "true"})
    try:
        running.start()
        yield running
    finally:
        running.stop()
        gate.heal()
        if not controlplane.running().get("kube-apiserver"):
            controlplane.start_apiserver()


def service_account(stack: stacks.Stack, ns: str, name: str, role: str | None = None) -> None:
    annotations = {"eks.amazonaws.com/role-arn": OWN + role} if role else {}
    stack.cp.api("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "annotations": annotations}})


def pod_as(stack: stacks.Stack, ns: str, name: str, account: str, node: stacks.Node, ip: str,
           labels: dict[str, str] | None = None) -> None:
    manifest = stack.pod_manifest(ns, name, labels=labels)
    manifest["spec"]["serviceAccountName"] = account
    stack.cp.api("POST", f"/api/v1/namespaces/{ns}/pods", manifest)
    kubelet.bind_pod(stack.cp, ns, name, node.name)
    stack.set_ip(ns, name, ip)


def annotate(stack: stacks.Stack, path: str, annotations: dict[str, str | None]) -> None:
    stack.cp.api("PATCH", path, {"metadata": {"annotations": annotations}})


def wait_role(stack: stacks.Stack, node: stacks.Node, ip: str, arn: str | None, timeout: float = 20.0) -> None:
    if arn is None:
        stack.wait_no_credentials(node, ip, timeout)
        return
    stacks.wait_for(lambda: (c := stack.credentials(node, ip)) and stack.sts.issued_keys().get(c["AccessKeyId"]) == arn,
                    timeout, f"{arn} at {ip}")


# --- IP reuse ------------------------------------------------------------------------------------------


def _give(stack: stacks.Stack, ns: str, source: str, name: str, node: stacks.Node, ip: str) -> str:
    """Pod ``name`` at ``ip``, its role from ``source``; the role's ARN."""
    role = f"reuse-{source}"
    if source == "serviceaccount":
        service_account(stack, ns, f"{name}-sa", role)
        pod_as(stack, ns, name, f"{name}-sa", node, ip)
    elif source == "binding-by-sa":
        service_account(stack, ns, f"{name}-sa")
        stack.apply_binding(ns, f"{name}-binding", {"role": role, "serviceAccountName": f"{name}-sa"})
        pod_as(stack, ns, name, f"{name}-sa", node, ip)
    else:  # the namespace's default role
        annotate(stack, f"/api/v1/namespaces/{ns}", {"podiam.io/default-role": role})
        service_account(stack, ns, f"{name}-sa")
        pod_as(stack, ns, name, f"{name}-sa", node, ip)
    return OWN + role


@pytest.mark.parametrize("order", ["deleted-then-reused", "reused-while-a-still-claims-it"])
@pytest.mark.parametrize("source", ["serviceaccount", "binding-by-sa", "namespace-default"])
def test_the_next_pod_on_an_ip_never_gets_the_previous_pods_role_whatever_its_source(
    stack: stacks.Stack, ns: str, source: str, order: str,
) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    checker = invariants.Checker(stack.sts.issued_keys, grace=1.0, revoke_bound=3.0)
    with invariants.Poller(checker, lambda: [(node, ip)], threads=4) as poller:
        with checker.change(node.name, ip, uid="a", role_arn=OWN + f"reuse-{source}"):
            first = _give(stack, ns, source, "a", node, ip)
        wait_role(stack, node, ip, first)
        if order == "reused-while-a-still-claims-it":
            # B (an annotated pod of another role) gets A's IP while the API server still shows A Running there.
            with checker.change(node.name, ip, uid="b", role_arn=OWN + "reuse-next"):
                stack.create_pod(ns, "b", role="reuse-next", node=node, ip=ip)
            handed_over = time.monotonic()
            time.sleep(2.0)
            assert stack.imds(node, ip).status == 404  # two live claims: neither is served
            stack.delete_pod(ns, "a")
        else:
            with checker.change(node.name, ip, uid=None, role_arn=None):
                stack.delete_pod(ns, "a")
            stacks.wait_for(lambda: checker.reusable(node.name, ip), 10, "the IP reusable")
            with checker.change(node.name, ip, uid="b", role_arn=OWN + "reuse-next"):
                stack.create_pod(ns, "b", role="reuse-next", node=node, ip=ip)
            handed_over = time.monotonic()
        wait_role(stack, node, ip, OWN + "reuse-next")
        time.sleep(1.0)
    stack.delete_pod(ns, "b")  # later modules' operators share these nodes: they need not fetch its role
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert poller.served(ip, first, after=handed_over + checker.grace) == []
    assert checker.counts["requests"] > 20


# --- revocations while the operator's watches expire ---------------------------------------------------------


def test_no_revocation_of_a_new_source_is_missed_when_watches_expire_while_cut_off(
    stack: stacks.Stack, ns: str, gate: tcpgate.TcpGate,
) -> None:
    node, other = stack.nodes
    checker = invariants.Checker(stack.sts.issued_keys, grace=1.0, revoke_bound=RECOVERY_BOUND)
    k2i = f"{ns}-k2i"
    stack.create_namespace(k2i, None)
    annotate(stack, f"/api/v1/namespaces/{k2i}", {"iam.amazonaws.com/allowed-roles": '["cut-k2i-*"]'})
    ips = {name: stack.next_ip() for name in ("sa-deleted", "sa-stripped", "ns-default", "by-sa", "k2i", "kept")}
    where = {name: (other if name == "kept" else node) for name in ips}
    with checker.change(node.name, ips["sa-deleted"], uid="sa-deleted", role_arn=OWN + "cut-sa-deleted"):
        service_account(stack, ns, "doomed", "cut-sa-deleted")
        pod_as(stack, ns, "sa-deleted", "doomed", node, ips["sa-deleted"])
    with checker.change(node.name, ips["sa-stripped"], uid="sa-stripped", role_arn=OWN + "cut-sa-stripped"):
        service_account(stack, ns, "stripped", "cut-sa-stripped")
        pod_as(stack, ns, "sa-stripped", "stripped", node, ips["sa-stripped"])
    # The namespace's default goes to a pod of its own namespace (the others here all have roles of their own).
    defaulted = f"{ns}-default"
    stack.create_namespace(defaulted, ".*")
    with checker.change(node.name, ips["ns-default"], uid="ns-default", role_arn=OWN + "cut-ns-default"):
        annotate(stack, f"/api/v1/namespaces/{defaulted}", {"podiam.io/default-role": "cut-ns-default"})
        service_account(stack, defaulted, "plain")
        pod_as(stack, defaulted, "ns-default", "plain", node, ips["ns-default"])
    with checker.change(node.name, ips["by-sa"], uid="by-sa", role_arn=OWN + "cut-by-sa"):
        service_account(stack, ns, "selected")
        stack.apply_binding(ns, "by-sa", {"role": "cut-by-sa", "serviceAccountName": "selected"})
        pod_as(stack, ns, "by-sa", "selected", node, ips["by-sa"])
    with checker.change(node.name, ips["k2i"], uid="k2i", role_arn=OWN + "cut-k2i-app"):
        stack.create_pod(k2i, "k2i", role="cut-k2i-app", node=node, ip=ips["k2i"])
    with checker.change(other.name, ips["kept"], uid="kept", role_arn=OWN + "cut-kept"):
        service_account(stack, ns, "keeper", "cut-kept")
        pod_as(stack, ns, "kept", "keeper", other, ips["kept"])
    for name, ip in ips.items():
        stack.wait_credentials(where[name], ip)

    targets = [(where[name], ip) for name, ip in ips.items()]
    with invariants.Poller(checker, lambda: targets, threads=2) as poller:
        checker.outage()
        gate.cut()
        cut = time.monotonic()
        stack.cp.restart_apiserver()  # a fresh watch cache: the operator's watches will be 410 Gone and relist
        revoked = ("sa-deleted", "sa-stripped", "ns-default", "by-sa", "k2i")
        for name in revoked:
            with checker.change(node.name, ips[name], uid=None, role_arn=None):
                if name == "sa-deleted":
                    stack.cp.api("DELETE", f"/api/v1/namespaces/{ns}/serviceaccounts/doomed")
                elif name == "sa-stripped":
                    annotate(stack, f"/api/v1/namespaces/{ns}/serviceaccounts/stripped", {"eks.amazonaws.com/role-arn": None})
                elif name == "ns-default":
                    annotate(stack, f"/api/v1/namespaces/{defaulted}", {"podiam.io/default-role": None})
                elif name == "by-sa":
                    stack.cp.api("PATCH", f"/apis/podiam.io/v1alpha1/namespaces/{ns}/podrolebindings/by-sa",
                                 {"spec": {"serviceAccountName": "nobody"}})
                else:
                    annotate(stack, f"/api/v1/namespaces/{k2i}", {"iam.amazonaws.com/allowed-roles": '["other-*"]'})
        time.sleep(1.0)
        assert stack.credentials(other, ips["kept"]) is not None  # the proxies keep serving meanwhile
        gate.heal()
        healed = time.monotonic()
        checker.recovered()
        print(f"operator cut off for {healed - cut:.1f}s (API server restarted meanwhile)")

        def all_revoked() -> bool:
            return all(stack.imds(node, ips[name]).status == 404 for name in revoked)

        stacks.wait_for(all_revoked, RECOVERY_BOUND, "every revocation made while cut off applied")
        print(f"after reconnection: revocations applied in {time.monotonic() - healed:.2f}s")
        time.sleep(1.0)
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert [a for a in list(poller.answers) if a.ip == ips["kept"] and a.started > cut and a.document is None] == []


# --- a tenant's binding stays in its namespace ------------------------------------------------------------------


def test_a_binding_by_service_account_name_never_reaches_another_namespace(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[1]
    victim = f"{ns}-victim"
    stack.create_namespace(victim, ".*")
    service_account(stack, victim, "payments")
    ip = stack.next_ip()
    pod_as(stack, victim, "payments-1", "payments", node, ip)
    service_account(stack, ns, "payments")
    stack.apply_binding(ns, "grab", {"role": "grab-role", "serviceAccountName": "payments"})
    body = stack.wait_binding_phase(ns, "grab", "Pending")
    assert body["status"]["pods"] == 0 and body["status"]["message"] == "no running pod matches its serviceAccountName 'payments'"
    time.sleep(1.0)
    assert stack.imds(node, ip).status == 404
    assert OWN + "grab-role" not in {c["RoleArn"] for c in stack.sts.assume_role_calls()}
