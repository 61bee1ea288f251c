"""Rolling updates and killed containers, with pods sampling their credentials all along: a pod never gets
the node's credentials nor another role, and gets its own back within a bound."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localcluster.controlplane import cluster as clusters
from tests.e2e import conftest
from localcluster import guide, pods
from localcluster import release as releases

pytestmark = pytest.mark.e2e

ROLE = "KiamTesterRole"
# Longest a pod may go without its credentials across one restart (measured: see the README's figures).
RECOVERY_BOUND = 20.0


@pytest.fixture(scope="module")
def samplers(release: releases.Release, real_cluster: clusters.Cluster) -> Iterator[str]:
    """A namespace with one sampling pod per node, each serving already."""
    plane = real_cluster.plane
    namespace = "restarts"
    plane.create_namespace(namespace, annotations={"iam.amazonaws.com/permitted": ".*"})
    for name in real_cluster.nodes:
        pods.create(plane, namespace, guide.sampler(f"sampler-{name}", real_cluster, node=name, role=ROLE))
    for name in real_cluster.nodes:
        pods.controlplane.wait_until(lambda n=name: _served(real_cluster, namespace, f"sampler-{n}"), 60,
                                     f"sampler on {name} served")
    yield namespace
    conftest.delete_namespace(real_cluster, namespace)


def _served(cluster: clusters.Cluster, namespace: str, pod: str) -> bool:
    found = guide.samples(cluster, namespace, pod)
    return bool(found) and found[-1].get("role") == ROLE and "key" in found[-1]


def _through(release: releases.Release, namespace: str, disruption: Callable[[], None]) -> dict[str, Any]:
    """Run ``disruption``, wait until every sampler is served again, and judge what the samplers saw meanwhile."""
    cluster = release.cluster
    began = time.time()
    disruption()
    time.sleep(2)  # what follows a kill (restart, resync) starts after it returns
    for name in cluster.nodes:
        pods.controlplane.wait_until(lambda n=name: _served(cluster, namespace, f"sampler-{n}"), 90,
                                     f"sampler on {name} served again")
    report: dict[str, Any] = {"longest_gap": 0.0, "answers": 0}
    for name in cluster.nodes:
        window = [s for s in guide.samples(cluster, namespace, f"sampler-{name}") if s["t"] >= began - 1]
        roles = {s["role"] for s in window if "role" in s}
        assert roles <= {ROLE}, f"sampler on {name} was answered as {roles - {ROLE}}"
        served = [s["t"] for s in window if "key" in s]
        gaps = [b - a for a, b in zip(served, served[1:])]
        report["longest_gap"] = max([report["longest_gap"], *gaps])
        report["answers"] += len(window)
    assert release.node_role_leaks() == [], "a pod received the node's credentials"
    assert report["longest_gap"] <= RECOVERY_BOUND, report
    return report


def test_proxy_rolling_update(release: releases.Release, real_cluster: clusters.Cluster, samplers: str) -> None:
    before = {p["metadata"]["uid"] for p in release.pods("proxy")}

    def upgrade() -> None:
        release.upgrade({"proxy": {"log": {"level": "debug"}}})
        real_cluster.plane.kubectl("rollout", "status", "-n", release.namespace, f"daemonset/{release.fullname}-proxy",
                                   "--timeout=120s")

    report = _through(release, samplers, upgrade)
    assert not before & {p["metadata"]["uid"] for p in release.pods("proxy")}, "the proxies were not replaced"
    print(f"proxy rolling update: longest gap {report['longest_gap']:.1f} s over {report['answers']} answers")


def test_proxy_container_killed_through_the_runtime(release: releases.Release, real_cluster: clusters.Cluster,
                                                   samplers: str) -> None:
    status = _proxy_container(release.proxy_pod("node-0"))
    container_id = status["containerID"].split("://", 1)[1]

    def kill() -> None:
        real_cluster.nodes["node-0"].ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
        pods.controlplane.wait_until(
            lambda: _proxy_container(release.proxy_pod("node-0"))["restartCount"] > status["restartCount"], 60,
            "the kubelet restarting the proxy container")

    report = _through(release, samplers, kill)
    print(f"proxy container SIGKILL: longest gap {report['longest_gap']:.1f} s")


def _proxy_container(pod: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in pod["status"]["containerStatuses"] if c["name"] == "proxy"]
    return found


def test_operator_rolling_update(release: releases.Release, real_cluster: clusters.Cluster, samplers: str) -> None:
    def upgrade() -> None:
        release.upgrade({"operator": {"log": {"level": "debug"}}})
        real_cluster.plane.kubectl("rollout", "status", "-n", release.namespace,
                                   f"deployment/{release.fullname}-operator", "--timeout=180s")

    report = _through(release, samplers, upgrade)
    print(f"operator rolling update: longest gap {report['longest_gap']:.1f} s")


def test_operator_pod_killed(release: releases.Release, real_cluster: clusters.Cluster, samplers: str) -> None:
    def kill_all() -> None:
        for pod in release.pods("operator"):
            real_cluster.plane.kubectl("delete", "pod", "-n", release.namespace, pod["metadata"]["name"],
                                       "--grace-period=0", "--force", "--wait=false")

    report = _through(release, samplers, kill_all)
    print(f"every operator pod deleted at once: longest gap {report['longest_gap']:.1f} s")
