"""Moving in from kube2iam, IRSA and EKS Pod Identity: each world's charts/podiam/ci/*-values.yaml installed on the
real API server (the operator and proxies as real processes, with the chart's RBAC), then that world's manifests
(tests/chart/worlds/*.yaml) applied unchanged but for the namespace's name, plus the one step the README's guide
asks for; the Deployment controller makes their pods, this module schedules them and reports their IPs, as
tests/chart/release.py does for podiam's own; then each pod's credentials are read from its node's proxy by its
source IP and given to the real AWS CLI (``aws sts get-caller-identity``), as a user of that world would check.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml  # type: ignore[import-untyped]

from localcluster import helm as _helm
from tests.chart import release as releases
from localcluster.controlplane import ControlPlane, kubelet
from localcluster import moto
from localcluster import proxy as proxy_support
from localcluster import stack as stacks

pytestmark = pytest.mark.chart

WORLDS = Path(__file__).parent / "worlds"
EXAMPLES = _helm.REPO / "examples" / "iam"
OWN = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/"
_octets = itertools.count(160, 2)
_pod_ips = (f"127.0.4.{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def chart_crds(controlplane: ControlPlane) -> None:
    controlplane.install_crds(*sorted((_helm.CHART / "crds").glob("*.yaml")))


@pytest.fixture
def installed(controlplane: ControlPlane, helm: _helm.Helm, sts: moto.StsFront, chart_crds: None,
              tmp_path: Path) -> Iterator[Callable[[str, str], releases.Release]]:
    """``install(name, world)``: the chart with ci/<world>-values.yaml, its proxies ready, its nodes untainted."""
    made: list[releases.Release] = []

    def install(name: str, world: str) -> releases.Release:
        release = releases.Release(controlplane, helm, tmp_path / name, name, sts=sts, node_octet=next(_octets),
                                   values_files=(_helm.CHART / "ci" / f"{world}-values.yaml",))
        made.append(release)
        release.add_nodes()
        release.apply()
        release.schedule_proxy_pods()
        release.start_operator()
        release.start_proxies()
        release.mark_ready_proxies(timeout=60)
        return release

    yield install
    for release in made:
        release.stop()
        print(f"--- {release.name}: operator log (tail) ---\n{release.operator_log()[-6000:]}")
        for namespace in controlplane.api("GET", "/api/v1/namespaces")["items"]:
            name = namespace["metadata"]["name"]
            if name.startswith(f"{release.name}-") and name != release.namespace:
                releases.delete_namespace(controlplane, name)
        release.uninstall()


# --- a world's user ---------------------------------------------------------------------------------


def apply_world(cp: ControlPlane, world: str, namespace: str, annotations: dict[str, str] | None = None) -> None:
    """The world's manifests as its user applies them; the Namespace (if it has one) named ``namespace``."""
    documents = [d for d in yaml.safe_load_all((WORLDS / f"{world}.yaml").read_text()) if d]
    spaces = [d for d in documents if d["kind"] == "Namespace"]
    space = spaces[0] if spaces else {"apiVersion": "v1", "kind": "Namespace", "metadata": {}}
    space["metadata"]["name"] = namespace
    space["metadata"].setdefault("annotations", {}).update(annotations or {})
    cp.kubectl("apply", "-f", "-", input=json.dumps(space))
    releases.wait_for(lambda: cp.api("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default"), 30, "default ServiceAccount")
    rest = [d for d in documents if d["kind"] != "Namespace"]
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(rest))


def run_pod(cp: ControlPlane, namespace: str, app: str, node: releases.Node) -> str:
    """The scheduler and the kubelet for the Deployment's pod: bound to ``node``, Running; its IP."""
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector={urllib.parse.quote(f'app={app}')}"
    (pod,) = releases.wait_for(lambda: cp.api("GET", path)["items"], 60, f"the Deployment {app}'s pod")
    name = pod["metadata"]["name"]
    kubelet.bind_pod(cp, namespace, name, node.name)
    ip = next(_pod_ips)
    kubelet.set_pod_status(cp, namespace, name, pod_ip=ip)
    return ip


def credentials(release: releases.Release, node: releases.Node, ip: str) -> dict[str, Any] | None:
    """What an SDK in the pod reads from 169.254.169.254 (here its node's proxy, by the pod's source IP)."""
    port = release.ports["metadata"]
    listing = proxy_support.http_request(node.ip, port, "GET", CREDENTIALS, source_ip=ip)
    if listing.status != 200:
        return None
    document = proxy_support.http_request(node.ip, port, "GET", CREDENTIALS + listing.text.strip(), source_ip=ip)
    return json.loads(document.body) if document.status == 200 else None


def identity(release: releases.Release, node: releases.Node, ip: str, sts: moto.StsFront) -> str:
    """``aws sts get-caller-identity`` with the pod's credentials: the assumed role's ARN."""
    document = releases.wait_for(lambda: credentials(release, node, ip), 30, f"credentials for {ip}")
    return str(stacks.caller_identity(sts.url, document)["Arn"])


def trusts(moto_server: moto.MotoServer, name: str, document: str) -> None:
    """The example trust policy loads into moto's IAM (which checks its grammar) for a role of that name."""
    iam = boto3.client("iam", endpoint_url=moto_server.url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    text = (EXAMPLES / document).read_text().replace("111122223333", moto.ACCOUNT_ID)
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=text)


# --- kube2iam ------------------------------------------------------------------------------------------


def test_kube2iam_values_render_as_its_flags(helm: _helm.Helm) -> None:
    rendered = helm.template(values_files=[_helm.CHART / "ci" / "kube2iam-values.yaml"])
    env = _helm.env_of(_helm.container(rendered.get("Deployment"), "operator"))
    assert env["PODIAM_BASE_ROLE_ARN"] == "arn:aws:iam::123456789012:role/"
    assert env["PODIAM_DEFAULT_ROLE"] == "kube2iam-default"
    assert env["PODIAM_NAMESPACE_KEY"] == "iam.amazonaws.com/allowed-roles"
    assert env["PODIAM_NAMESPACE_RESTRICTION_FORMAT"] == "glob"
    assert env["PODIAM_STS_REGION"] == "eu-west-1"
    proxy = _helm.env_of(_helm.container(rendered.get("DaemonSet"), "proxy"))
    assert (proxy["PODIAM_PROXY_IPTABLES"], proxy["PODIAM_PROXY_HOST_INTERFACE"]) == ("true", "cali+")


def test_kube2iam_namespaces_and_deployments_unchanged(
    controlplane: ControlPlane, installed: Callable[[str, str], releases.Release], sts: moto.StsFront,
) -> None:
    cp = controlplane
    release = installed("mig-kube2iam", "kube2iam")
    payments = f"{release.name}-payments"
    apply_world(cp, "kube2iam", payments)
    node, other = release.nodes
    api, ledger, batch = run_pod(cp, payments, "payments-api", node), run_pod(cp, payments, "payments-ledger", other), \
        run_pod(cp, payments, "batch", node)
    assert identity(release, node, api, sts).startswith(f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/payments-reader/")
    assert identity(release, other, ledger, sts).startswith(f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/payments-ledger-writer/")
    # kube2iam let its --default-role past the namespace's list; podiam asks the list too, and says so in its log.
    releases.wait_for(lambda: f"namespace {payments}: the cluster's default role does not apply" in release.operator_log(),
                      30, "the log saying where the default does not apply")
    assert credentials(release, node, batch) is None
    # The guide's one step for a namespace whose pods use the default role: add it to the list.
    cp.kubectl("annotate", "namespace", payments, "--overwrite",
               'iam.amazonaws.com/allowed-roles=["payments-*", "kube2iam-default"]')
    releases.wait_for(lambda: credentials(release, node, batch), 10, "the default role once the list permits it")
    assert identity(release, node, batch, sts).startswith(f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/kube2iam-default/")
    assert not release.forbidden_lines()


# --- IRSA --------------------------------------------------------------------------------------------------


def test_irsa_service_account_and_deployment_unchanged(
    controlplane: ControlPlane, installed: Callable[[str, str], releases.Release], sts: moto.StsFront,
    moto_server: moto.MotoServer,
) -> None:
    cp = controlplane
    trusts(moto_server, "payments-irsa", "pod-role-trust-policy-irsa-migration.json")
    release = installed("mig-irsa", "irsa")
    payments = f"{release.name}-payments"
    # The guide's one step: IRSA had no namespace policy (the trust policy named the ServiceAccount); podiam's
    # is the namespace's, since whoever edits ServiceAccounts there may write any ARN in them.
    apply_world(cp, "irsa", payments, {"iam.amazonaws.com/permitted": "payments-.*"})
    node = release.nodes[1]
    ip = run_pod(cp, payments, "payments-api", node)
    assert identity(release, node, ip, sts).startswith(f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/payments-irsa/{payments}.")
    # What the migrated trust policy requires (examples/iam/pod-role-trust-policy-irsa-migration.json): the
    # namespace and the ServiceAccount as session tags of a per-pod session.
    (call,) = sts.assume_role_calls(OWN + "payments-irsa")
    assert call["Tags"]["kubernetes-namespace"] == payments and call["Tags"]["kubernetes-service-account"] == "payments-api"
    # The annotation removed from the ServiceAccount: revoked at once.
    cp.kubectl("annotate", "serviceaccount", "-n", payments, "payments-api", "eks.amazonaws.com/role-arn-")
    releases.wait_for(lambda: credentials(release, node, ip) is None, 5, "revoked with the ServiceAccount's annotation")
    assert not release.forbidden_lines()


# --- EKS Pod Identity ------------------------------------------------------------------------------------------


def test_pod_identity_associations_as_bindings_with_its_session_tags(
    controlplane: ControlPlane, installed: Callable[[str, str], releases.Release], sts: moto.StsFront,
    moto_server: moto.MotoServer,
) -> None:
    cp = controlplane
    trusts(moto_server, "payments-pod-identity", "pod-role-trust-policy-pod-identity-migration.json")
    trusts(moto_server, "reports-reader-trust-check", "pod-role-trust-policy-cross-account.json")
    release = installed("mig-pod-identity", "pod-identity")
    payments = f"{release.name}-payments"
    # The guide's one step: the namespace's policy, for the associations' roles (the cross-account one by its ARN).
    apply_world(cp, "pod-identity", payments, {
        "iam.amazonaws.com/permitted": "payments-pod-identity|reports-hop|arn:aws:iam::444455556666:role/reports-reader"})
    node, other = release.nodes
    api, reports = run_pod(cp, payments, "payments-api", node), run_pod(cp, payments, "reports", other)
    assert identity(release, node, api, sts).startswith(f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/payments-pod-identity/")
    assert ":assumed-role/reports-reader/" in identity(release, other, reports, sts)
    for binding in ("payments-api", "reports"):
        body = cp.api("GET", f"/apis/podiam.io/v1alpha1/namespaces/{payments}/podrolebindings/{binding}")
        assert body["status"]["phase"] == "Bound" and body["status"]["pods"] == 1, body["status"]
    # Pod Identity's session tags, transitive, on the pod's own session...
    (direct,) = sts.assume_role_calls(OWN + "payments-pod-identity")
    assert direct["Tags"]["eks-cluster-name"] == "my-cluster" and direct["Tags"]["kubernetes-namespace"] == payments
    assert direct["Tags"]["kubernetes-service-account"] == "payments-api" and direct["Tags"]["kubernetes-pod-name"]
    assert sorted(direct["TransitiveTagKeys"]) == sorted(direct["Tags"])
    # ...and, for the cross-account association (targetRoleArn), on the intermediate role's, whose keys assume the target.
    (hop,) = sts.assume_role_calls(OWN + "reports-hop")
    (target,) = sts.assume_role_calls("arn:aws:iam::444455556666:role/reports-reader")
    assert hop["Tags"]["kubernetes-service-account"] == "reports" and sorted(hop["TransitiveTagKeys"]) == sorted(hop["Tags"])
    assert sts.issued_keys()[target["Caller"]] == OWN + "reports-hop" and target["Tags"] == {}
    assert not release.forbidden_lines()
