"""End to end on real nodes (marker ``e2e``): the local cluster's kubelets,
containerd, runc and CNI, each node in its own network namespace, running
podiam's images built here (localcluster/controlplane, localcluster/images).

Needs root. Not root: the tier skips and says so. Root (as CI is): it runs,
and anything missing is a failure, never a skip.

Safety for the whole tier: forwarding off in the root namespace (checked
before and after), a REJECT guard for 169.254.169.254 in the root namespace,
no node with a route off this machine (``Cluster.check_safety``); each node's
169.254.169.254 is a stand-in inside that node's namespace.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from demo import iam
from localcluster import helm as _helm
from localcluster.controlplane import cluster as clusters
from localcluster.controlplane.lifetime import started_cluster
from localcluster import release as releases
from localcluster import moto, netns

GUARD_COMMENT = "podiam-e2e-guard"
_names = itertools.count()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("real nodes need root (network namespaces, containerd, kubelet); CI runs as root, where this tier runs")


@pytest.fixture(scope="session")
def root_safety() -> Iterator[None]:
    """Forwarding off and the REJECT guard in place in the root namespace, for the whole tier."""
    require_root()
    assert netns.forwarding() == "0", "net.ipv4.ip_forward is on: refusing to run real nodes"
    guard = netns.RejectGuard(GUARD_COMMENT).install()
    try:
        yield
    finally:
        guard.remove()
        assert netns.forwarding() == "0"


@pytest.fixture(scope="session")
def iam_roles(moto_server: moto.MotoServer) -> iam.Roles:
    """The guide's roles in moto's IAM (examples/iam): the node role, podiam-operator, KiamTesterRole."""
    return iam.create_roles(moto_server.url)


@pytest.fixture(scope="session")
def real_cluster(root_safety: None, podiam_images: dict[str, Any], moto_server: moto.MotoServer, sts: moto.StsFront,
                 iam_roles: iam.Roles) -> Iterator[clusters.Cluster]:
    """Two real nodes, node-0 and node-1, shared by the tier: make your own namespace, undo what you change.

    Each node's 169.254.169.254 serves the node role from moto; pods reach the
    counting STS front at ``cluster.url(sts.url)``.
    """
    with started_cluster(nodes=2, sts_endpoint=moto_server.url, forward_ports=[sts.port]) as cluster:
        cluster.check_safety()
        yield cluster
        cluster.check_safety()


@pytest.fixture(scope="session")
def helm() -> _helm.Helm:
    return _helm.Helm(_helm.install_helm())


@pytest.fixture(scope="module")
def release(real_cluster: clusters.Cluster, helm: _helm.Helm, sts: moto.StsFront) -> Iterator[releases.Release]:
    """``helm install`` with the user's values only (localcluster/release.py), uninstalled after the module."""
    installed = releases.Release(real_cluster, helm, sts.url)
    installed.install()
    try:
        yield installed
    finally:
        installed.uninstall()
        installed.remove_iptables_rules()


@pytest.fixture
def ns(real_cluster: clusters.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"e{next(_names)}-{slug}"
    real_cluster.plane.create_namespace(name)
    yield name
    delete_namespace(real_cluster, name)


def delete_namespace(cluster: clusters.Cluster, name: str) -> None:
    """Delete and wait until its pods are gone: a pod still polling after its module uninstalled podiam would
    reach the node's own metadata service, and count as a leak for the next module's release."""
    cluster.plane.kubectl("delete", "namespace", name, "--ignore-not-found", "--timeout=90s", check=False, timeout=120)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed e2e test shows the tails of the nodes' kubelet and containerd logs."""
    report = yield
    cluster = getattr(item, "funcargs", {}).get("real_cluster")
    if report.failed and isinstance(cluster, clusters.Cluster):
        for member in cluster.nodes.values():
            for name in ("kubelet", "containerd"):
                try:
                    tail = (member.dir / f"{name}.log").read_text(errors="replace")[-3000:]
                except OSError:
                    continue
                report.sections.append((f"{member.name}: tail of {name}.log", tail))
    return report
