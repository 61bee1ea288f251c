"""A stopped cluster leaves nothing behind: processes, mounts, namespaces, links,
iptables rules, cgroups, and its entries in the host folders its components
write to whatever their configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import network, node
from localcluster.controlplane.lifetime import started_cluster
from localcluster import pods
from localcluster import moto

pytestmark = pytest.mark.e2e


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _cgroups(root: str) -> list[str]:
    return [str(path) for path in Path("/sys/fs/cgroup").glob(f"*/{root.lstrip('/')}")]


def test_a_stopped_cluster_leaves_nothing_behind(root_safety: None, podiam_images: dict[str, Any],
                                                  moto_server: moto.MotoServer) -> None:
    with started_cluster(nodes=["solo"], sts_endpoint=moto_server.url) as cluster:
        folder, tag = cluster.dir, cluster.switch.tag
        record = cluster.nodes["solo"].record
        pods.create(cluster.plane, "default", pods.sleeper("busy", cluster.images["python-base"].ref))
        pods.wait_ready(cluster.plane, "default", "busy")
        # What exists while it runs, so the checks below look for real things.
        shim_sockets = node._shim_socket_files(Path(record.dir) / "containerd" / "state")
        assert shim_sockets and all(s.exists() for s in shim_sockets)
        assert _processes_mentioning(str(folder)) and _cgroups(record.cgroup_root)
        assert network.netns_exists(record.netns) and network.netns_exists(cluster.switch.netns)
        cni_results = node.cni_cache_entries(record)
        assert len(cni_results) >= 2, "no cached CNI results (the pod's network and loopback)"

    assert not folder.exists()
    assert _processes_mentioning(str(folder)) == []
    assert [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(folder) in line] == []
    assert not network.netns_exists(record.netns) and not network.netns_exists(cluster.switch.netns)
    assert f"pdm{tag}" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f"podiam-cluster-{tag}" not in subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert _cgroups(record.cgroup_root) == []
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    assert f"pdm{tag}" not in routes, "a route through the cluster's switch port is left"
    assert not any(s.exists() for s in shim_sockets)
    assert not any(path.exists() for path in cni_results)
    if node.LEGACY_CONTAINER_LOGS.exists():
        assert not [p for p in node.LEGACY_CONTAINER_LOGS.iterdir() if p.is_symlink() and str(folder) in str(p.readlink())]
    assert network.forwarding() == "0"
