"""Uninstalling as NOTES.txt and the README say: the iptables rule removed on every node first (the rule
outlives the proxies by design, so a restart never exposes the node's credentials), then ``helm uninstall``;
pods then reach the node's metadata service directly, as after uninstalling Kiam."""

from __future__ import annotations

import pytest

from localcluster import helm as _helm
from localcluster.controlplane import cluster as clusters
from localcluster import guide, pods
from localcluster import release as releases
from localcluster import moto

pytestmark = pytest.mark.e2e


def test_documented_uninstall_leaves_no_rule_behind(real_cluster: clusters.Cluster, helm: _helm.Helm,
                                                    sts: moto.StsFront, ns: str) -> None:
    release = releases.Release(real_cluster, helm, sts.url)
    notes = release.install()
    assert "cleanupIptables=true" in notes and "helm uninstall" in notes, "NOTES.txt no longer says how to uninstall"
    plane = real_cluster.plane
    try:
        plane.kubectl("annotate", "namespace", ns, "iam.amazonaws.com/permitted=.*")
        pods.create(plane, ns, guide.sampler("app", real_cluster, node="node-1", role="KiamTesterRole"))
        pods.wait_ready(plane, ns, "app")
        pods.controlplane.wait_until(lambda: "key" in (guide.samples(real_cluster, ns, "app") or [{}])[-1], 30,
                                     "the pod served its role")
        assert all(release.iptables_rules(n) for n in real_cluster.nodes)

        # NOTES.txt's steps, as a user runs them.
        release.upgrade({"proxy": {"host": {"iptables": False, "cleanupIptables": True}}})
        plane.kubectl("rollout", "status", "-n", release.namespace, f"daemonset/{release.fullname}-proxy", "--timeout=120s")
        release.uninstall()
    except BaseException:
        release.uninstall()
        release.remove_iptables_rules()
        raise
    assert {n: release.iptables_rules(n) for n in real_cluster.nodes} == {n: [] for n in real_cluster.nodes}

    # Now the pod's 169.254.169.254 is its node's own metadata service: the node role, as without podiam.
    pods.controlplane.wait_until(lambda: guide.samples(real_cluster, ns, "app")[-1].get("role") == clusters.NODE_ROLE_NAME,
                                 30, "the pod reaching the node's metadata service directly")
