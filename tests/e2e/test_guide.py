"""The Kiam guide, with podiam, on real nodes: ``helm install`` with the user's values only, then the guide's
test chapter with its Deployment as a real pod and the real AWS CLI inside it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from localcluster.controlplane import cluster as clusters
from localcluster.controlplane import network
from localcluster import guide, pods
from localcluster import release as releases
from localcluster import moto

pytestmark = pytest.mark.e2e

POD_NETWORK = ipaddress.ip_network(network.POD_SUBNETS)


def test_install_runs_every_part(release: releases.Release, real_cluster: clusters.Cluster) -> None:
    operators = [p for p in release.pods("operator") if p["status"].get("phase") == "Running"]
    assert len(operators) == 2, "the chart's two operator replicas"
    # On the pod network (the chart's default), yet they have AWS credentials: their node's identity,
    # through their node's proxy (operator.nodeIdentity).
    assert all(ipaddress.ip_address(p["status"]["podIP"]) in POD_NETWORK for p in operators)
    release.wait_proxies_ready()
    proxies = release.pods("proxy")
    assert sorted(p["spec"]["nodeName"] for p in proxies) == sorted(real_cluster.nodes)
    assert all(p["status"]["podIP"] == real_cluster.nodes[p["spec"]["nodeName"]].ip for p in proxies)
    for name in real_cluster.nodes:
        assert release.iptables_rules(name), f"no {releases.CHAIN} rule on {name}"


def test_the_guides_test_chapter(release: releases.Release, real_cluster: clusters.Cluster, sts: moto.StsFront,
                                 ns: str) -> None:
    plane = real_cluster.plane
    plane.kubectl("annotate", "namespace", ns, "iam.amazonaws.com/permitted=.*")
    plane.kubectl("apply", "-n", ns, "-f", "-", input=pods.yaml_dump(guide.deployment(real_cluster, sts.url)))
    plane.kubectl("rollout", "status", "-n", ns, "deployment/aws-iam-tester", "--timeout=90s")
    (pod,) = [p["metadata"]["name"] for p in plane.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Daws-iam-tester")["items"]]

    code, output = guide.caller_identity(real_cluster, ns, pod)
    assert code == 0 and ":assumed-role/KiamTesterRole/" in output, output
    listed = plane.kubectl("get", "podrolebindings", "-n", ns)
    assert "KiamTesterRole" in listed and "Bound" in listed, listed

    plane.kubectl("annotate", "pods", "-n", ns, pod, "iam.amazonaws.com/role-")

    def refused() -> bool:
        code, output = guide.caller_identity(real_cluster, ns, pod)
        return code != 0 and "Unable to locate credentials" in output

    pods.controlplane.wait_until(refused, 10, "Unable to locate credentials after the annotation is removed", interval=0.2)


def test_each_proxy_holds_only_its_nodes_pods(release: releases.Release, real_cluster: clusters.Cluster,
                                              tmp_path: Path, ns: str) -> None:
    plane = real_cluster.plane
    plane.kubectl("annotate", "namespace", ns, "iam.amazonaws.com/permitted=.*")
    placement = {"a-0": "node-0", "b-0": "node-0", "c-1": "node-1"}
    for name, node in placement.items():
        pods.create(plane, ns, guide.sampler(name, real_cluster, node=node, role="KiamTesterRole"))
    ips = {name: pods.wait_ready(plane, ns, name)["status"]["podIP"] for name in placement}

    def held_and_expected() -> dict[str, tuple[int, int]]:
        return {node: (release.proxy_status(node, tmp_path / "tls").pods, _served_pods_on(release, node))
                for node in ("node-0", "node-1")}

    pods.controlplane.wait_until(lambda: all(h == e for h, e in held_and_expected().values()), 30,
                                 "each proxy holding exactly its own node's pods", interval=0.5)
    assert all(expected >= 1 for _, expected in held_and_expected().values())

    # A pod of node-1 asking node-0's proxy directly is nobody there.
    other = real_cluster.nodes["node-0"]
    answer = pods.exec_in(plane, ns, "c-1", "python3", "-c", _GET_STATUS,
                          f"http://{other.ip}:8181/latest/meta-data/iam/security-credentials/", check=False)
    assert answer.strip().startswith("404"), answer
    # and its own node answers it with its role.
    assert guide.samples(real_cluster, ns, "c-1")[-1].get("role") == "KiamTesterRole"
    assert ips["c-1"] not in {r["source"] for r in other.metadata_requests()}


def test_no_pod_ever_received_the_node_role(release: releases.Release, real_cluster: clusters.Cluster) -> None:
    """Across the module: the nodes' metadata services gave credentials to the nodes themselves only (the
    proxies' upstream for the operator's node identity), never to a pod address."""
    assert release.node_role_leaks() == []
    served = [r for m in real_cluster.nodes.values() for r in m.metadata_requests() if r["credentials"]]
    assert served, "the operator never used the node identity (it should have: that is how it reached STS)"


def _served_pods_on(release: releases.Release, node: str) -> int:
    """What the node's proxy should hold: its running pods with a role, and the operator's own pods there
    (their node identity)."""
    listed = release.plane.api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node},status.phase%3DRunning")["items"]
    live = [p for p in listed if p["metadata"].get("deletionTimestamp") is None and p["status"].get("podIP")]
    with_role = [p for p in live if "iam.amazonaws.com/role" in p["metadata"].get("annotations", {})]
    operators = [p for p in release.pods("operator") if p["spec"].get("nodeName") == node and p in live]
    return len(with_role) + len(operators)


_GET_STATUS = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""
