"""IRSA's manifests on real nodes: ``helm install`` with charts/podiam/ci/irsa-values.yaml, then an IRSA user's
ServiceAccount (``eks.amazonaws.com/role-arn``) and Deployment (tests/chart/worlds/irsa.yaml) as they are, with the
two changes every e2e pod needs on this machine (the AWS CLI image built here, no registry being reachable; the STS
endpoint, moto through the nodes' relay), the region EKS's webhook used to inject, and the README's one step (the
namespace's policy). The AWS CLI inside the
real pod prints the ServiceAccount's role, then, once the annotation is gone, "Unable to locate credentials"; no pod
ever got the node's role."""

from __future__ import annotations

from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from localcluster import helm as _helm
from localcluster.controlplane import cluster as clusters
from localcluster import guide, pods
from localcluster import release as releases
from localcluster import moto

pytestmark = pytest.mark.e2e

WORLD = _helm.REPO / "tests" / "chart" / "worlds" / "irsa.yaml"
IRSA_VALUES = _helm.CHART / "ci" / "irsa-values.yaml"


def irsa_manifests(cluster: clusters.Cluster, sts_url: str) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = [d for d in yaml.safe_load_all(WORLD.read_text()) if d]
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    container["image"] = cluster.images["aws-cli"].ref
    container["imagePullPolicy"] = "Never"
    container["env"] = [
        {"name": "AWS_ENDPOINT_URL_STS", "value": cluster.url(sts_url)},
        # What EKS's pod identity webhook injected besides the token (README, "Migrating from IRSA"): the AWS CLI
        # needs a region, and nothing else gives it one here.
        {"name": "AWS_DEFAULT_REGION", "value": cluster.region},
    ]
    template["spec"]["terminationGracePeriodSeconds"] = 1
    return documents


def test_an_irsa_service_account_and_deployment_unchanged_get_the_role_in_a_real_pod(
    real_cluster: clusters.Cluster, helm: _helm.Helm, sts: moto.StsFront, ns: str,
) -> None:
    plane = real_cluster.plane
    release = releases.Release(real_cluster, helm, sts.url, values_files=[IRSA_VALUES])
    release.install()
    try:
        plane.kubectl("annotate", "namespace", ns, "iam.amazonaws.com/permitted=payments-.*")
        plane.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(irsa_manifests(real_cluster, sts.url)))
        plane.kubectl("rollout", "status", "-n", ns, "deployment/payments-api", "--timeout=90s")
        (pod,) = [p["metadata"]["name"] for p in
                  plane.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Dpayments-api")["items"]]

        seen: list[str] = []

        def assumed() -> bool:
            code, output = guide.caller_identity(real_cluster, ns, pod)
            seen.append(output)
            return code == 0 and f":assumed-role/payments-irsa/{ns}." in output

        try:
            pods.controlplane.wait_until(assumed, 30, "aws sts get-caller-identity prints the ServiceAccount's role", interval=0.5)
        except TimeoutError as error:
            raise AssertionError(f"{error}; the AWS CLI said: {seen[-1] if seen else '(nothing)'}") from None
        # The same STS front served earlier tests (the chart's IRSA world too): this namespace's calls only.
        calls = [call for call in sts.assume_role_calls(f"arn:aws:iam::{clusters.ACCOUNT_ID}:role/payments-irsa")
                 if call["Tags"].get("kubernetes-namespace") == ns]
        assert calls and {call["Tags"]["kubernetes-service-account"] for call in calls} == {"payments-api"}, calls

        plane.kubectl("annotate", "serviceaccount", "-n", ns, "payments-api", "eks.amazonaws.com/role-arn-")

        def refused() -> bool:
            code, output = guide.caller_identity(real_cluster, ns, pod)
            return code != 0 and "Unable to locate credentials" in output

        pods.controlplane.wait_until(refused, 10, "Unable to locate credentials once the annotation is removed", interval=0.2)
        assert release.node_role_leaks() == []
    finally:
        # The pods go before the release that served them (a pod still asking would reach the node's own role).
        real_cluster.plane.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=90s", check=False, timeout=120)
        release.uninstall()
        release.remove_iptables_rules()
