"""The guide's own values, migrated (charts/podiam/ci/kiam-guide-values.yaml): secrets mode with the guide's
cfssl-made certificates in its Secrets (kiam-server-tls, kiam-agent-tls), its file names, its
server.assumeRoleArn and ``!eth0``, on real nodes; then the guide's test chapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import helm as _helm
from localcluster.controlplane import cluster as clusters
from localcluster import guide, pods
from localcluster import release as releases
from tests.integration.tls import cfssl
from localcluster import moto

pytestmark = pytest.mark.e2e

GUIDE_VALUES = _helm.CHART / "ci" / "kiam-guide-values.yaml"
NAMESPACE = "podiam-system"


def _guide_secrets(cluster: clusters.Cluster, workdir: Path) -> None:
    """The guide's TLS chapter: cfssl gencert for the CA, server and agent, then kubectl create secret generic."""
    tools = cfssl.Cfssl(cfssl.ensure_built(), workdir)
    tools.init_ca(cfssl.GUIDE_CA)
    tools.issue("server", cfssl.GUIDE_SERVER)
    # As the values file says: add "podiam-proxy" to the hosts of agent.json.
    tools.issue("agent", {**cfssl.GUIDE_AGENT, "hosts": ["podiam-proxy"]})
    plane = cluster.plane
    plane.kubectl("create", "namespace", NAMESPACE, check=False)  # another module's release may have left it
    for name, files in (("kiam-server-tls", ("ca.pem", "server.pem", "server-key.pem")),
                        ("kiam-agent-tls", ("ca.pem", "agent.pem", "agent-key.pem"))):
        plane.kubectl("create", "secret", "generic", name, "-n", NAMESPACE,
                      *(f"--from-file={workdir / f}" for f in files))


def test_the_guides_values_and_cfssl_secrets(real_cluster: clusters.Cluster, helm: _helm.Helm, sts: moto.StsFront,
                                             ns: str, tmp_path: Path) -> None:
    _guide_secrets(real_cluster, tmp_path / "cfssl")
    release = releases.Release(real_cluster, helm, sts.url, values_files=[GUIDE_VALUES], values={
        # Left as the user's: this machine has no /etc/pki bundle (a hostPath to a missing folder would make
        # containerd create it on the host), and the STS endpoint is moto's.
        "operator": {"extraHostPathMounts": [], "extraEnv": {"AWS_CA_BUNDLE": None},
                     "assumeRoleArn": "arn:aws:iam::123456789012:role/kiam-server"},
        "proxy": {"extraHostPathMounts": [], "host": {"interface": "!eth0"}},
    })
    release.install()
    try:
        plane = real_cluster.plane
        # useHostNetwork: true in the guide: one operator replica per node, on the node's address.
        operators = release.pods("operator")
        assert {p["status"].get("podIP") for p in operators} <= {m.ip for m in real_cluster.nodes.values()}
        plane.kubectl("annotate", "namespace", ns, "iam.amazonaws.com/permitted=.*")
        plane.kubectl("apply", "-n", ns, "-f", "-", input=pods.yaml_dump(guide.deployment(real_cluster, sts.url)))
        plane.kubectl("rollout", "status", "-n", ns, "deployment/aws-iam-tester", "--timeout=90s")
        (pod,) = [p["metadata"]["name"] for p in
                  plane.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Daws-iam-tester")["items"]]
        code, output = guide.caller_identity(real_cluster, ns, pod)
        assert code == 0 and ":assumed-role/KiamTesterRole/" in output, output
        # server.assumeRoleArn: the operator assumed the guide's kiam-server role first.
        assert sts.assume_role_count("arn:aws:iam::123456789012:role/kiam-server") >= 1
    finally:
        release.uninstall()
        release.remove_iptables_rules()
        real_cluster.plane.kubectl("delete", "secret", "-n", NAMESPACE, "kiam-server-tls", "kiam-agent-tls", check=False)
