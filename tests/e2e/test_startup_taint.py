"""Nodes that register with the start-up taint: the scheduler keeps pods off a node until its proxy holds its
snapshot (the operator lifts the taint then), and no pod there ever reaches the node's own credentials."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from localcluster import helm as _helm
from localcluster.controlplane import cluster as clusters
from localcluster.controlplane import node as nodes
from localcluster.controlplane.lifetime import started_cluster
from localcluster import guide, pods
from localcluster import release as releases
from localcluster import moto

pytestmark = pytest.mark.e2e

TAINT = f"{nodes.STARTUP_TAINT}=true:NoSchedule"
ROLE = "KiamTesterRole"


def _taints(cluster: clusters.Cluster, name: str) -> list[str]:
    return [t["key"] for t in cluster.plane.api("GET", f"/api/v1/nodes/{name}")["spec"].get("taints", [])]


def _condition_time(pod: dict[str, object], kind: str) -> str:
    conditions = pod["status"]["conditions"]  # type: ignore[index]
    (found,) = [c for c in conditions if c["type"] == kind and c["status"] == "True"]  # type: ignore[union-attr]
    return str(found["lastTransitionTime"])


def _first_snapshot_time(release: releases.Release, node: str) -> str:
    """When the node's proxy logged its first snapshot, as an API timestamp (second precision, rounded down)."""
    pod = release.proxy_pod(node)["metadata"]["name"]
    logs = release.plane.kubectl("logs", "-n", release.namespace, pod)
    (line,) = [json.loads(raw) for raw in logs.splitlines() if "first snapshot applied" in raw]
    moment = datetime.datetime.fromisoformat(line["time"]).astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _samplers_never_saw_the_node(cluster: clusters.Cluster, namespace: str, names: list[str]) -> None:
    for name in names:
        seen = guide.samples(cluster, namespace, name)
        assert seen, f"{name} logged nothing"
        assert {s["role"] for s in seen if "role" in s} <= {ROLE}, f"{name} saw another role"
        assert "key" in seen[-1], f"{name} is not served: {seen[-3:]}"


def test_a_new_node_opens_only_once_its_proxy_holds_its_snapshot(release: releases.Release,
                                                                  real_cluster: clusters.Cluster, ns: str) -> None:
    plane = real_cluster.plane
    plane.kubectl("annotate", "namespace", ns, "iam.amazonaws.com/permitted=.*")
    # Pods for the new node exist before it does: they wait for it, then for its taint to go.
    names = [f"early-{i}" for i in range(3)]
    for name in names:
        pods.create(plane, ns, guide.sampler(name, real_cluster, node="node-2", role=ROLE, interval=0.1))
    real_cluster.add_node("node-2", taints=[TAINT])
    try:
        release.wait_proxies_ready()
        pods.controlplane.wait_until(lambda: nodes.STARTUP_TAINT not in _taints(real_cluster, "node-2"), 60,
                                     "the operator lifting the start-up taint")
        # Every early pod was placed only once node-2's proxy held its snapshot (to the second: API timestamps).
        snapshot = _first_snapshot_time(release, "node-2")
        for name in names:
            placed = _condition_time(pods.wait_ready(plane, ns, name), "PodScheduled")
            assert placed >= snapshot, f"{name} was placed at {placed}, before the proxy's snapshot at {snapshot}"
        pods.controlplane.wait_until(lambda: all("key" in (guide.samples(real_cluster, ns, n) or [{}])[-1] for n in names),
                                     30, "early pods served")
        _samplers_never_saw_the_node(real_cluster, ns, names)
        assert release.node_role_leaks() == []
    finally:
        for name in names:
            plane.kubectl("delete", "pod", "-n", ns, name, "--grace-period=0", "--force", "--wait=false", check=False)
        real_cluster.remove_node("node-2")


def test_a_first_install_where_every_node_is_tainted(root_safety: None, podiam_images: object,
                                                    moto_server: moto.MotoServer, sts: moto.StsFront,
                                                    helm: _helm.Helm, tmp_path: Path) -> None:
    """A node group registered with the start-up taint as the README advises, before podiam exists: the
    operator still gets scheduled (it tolerates the taint), and the cluster converges with no hand edits."""
    names = ["node-0", "node-1"]
    with started_cluster(nodes=names, sts_endpoint=moto_server.url, forward_ports=[sts.port],
                         taints={n: [TAINT] for n in names}) as cluster:
        plane = cluster.plane
        assert all(nodes.STARTUP_TAINT in _taints(cluster, n) for n in names)
        plane.create_namespace("apps", annotations={"iam.amazonaws.com/permitted": ".*"})
        pods.create(plane, "apps", guide.sampler("waiting", cluster, role=ROLE, interval=0.1))
        release = releases.Release(cluster, helm, sts.url)
        release.install(timeout="240s")
        pods.controlplane.wait_until(lambda: not any(nodes.STARTUP_TAINT in _taints(cluster, n) for n in names), 60,
                                     "every start-up taint lifted")
        pods.wait_ready(plane, "apps", "waiting")
        pods.controlplane.wait_until(lambda: "key" in (guide.samples(cluster, "apps", "waiting") or [{}])[-1], 30,
                                     "the waiting pod served")
        _samplers_never_saw_the_node(cluster, "apps", ["waiting"])
        assert release.node_role_leaks() == []
