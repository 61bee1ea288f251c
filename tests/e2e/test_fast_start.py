"""Pods that ask for credentials at their first instant, on real nodes (bench/guide measures the same under load).

The kubelet reports a pod's IP to the API server some time after the pod's
containers can send packets: over a second on a busy node, and botocore,
the AWS CLI, the JavaScript and Java SDKs give the metadata service one try
of 1 s. The operator announces each pod granted a role on a node before it
has an IP (pending), and the node's proxy recognises it by the IP the node's
container runtime gave it (the pod-ips container reading the CNI result
cache), checked against the announced uid, namespace and name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.controlplane import cluster as clusters
from localcluster import processes
from localcluster.controlplane import controlplane
from localcluster import guide, pods
from localcluster import release as releases
from localcluster import moto

pytestmark = pytest.mark.e2e

ROLE = "KiamTesterRole"
NAMESPACE = "fast-start"
CONTROL_PORT = "8182"

# botocore's way, from the container's first instant: IMDSv2 token, role listing, the role's document, each with a
# 1 s timeout and no retry; a 404 is final. One JSON line: what it got.
ONE_ATTEMPT = textwrap.dedent("""
    import json, time, urllib.error, urllib.request
    started = time.time()
    def call(method, path, headers):
        request = urllib.request.Request("http://169.254.169.254" + path, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=1) as answer:
            return answer.read().decode()
    try:
        token = {"X-aws-ec2-metadata-token": call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})}
        role = call("GET", "/latest/meta-data/iam/security-credentials/", token).strip()
        document = json.loads(call("GET", "/latest/meta-data/iam/security-credentials/" + role, token))
        line = {"role": role, "code": document["Code"]}
    except urllib.error.HTTPError as error:
        line = {"status": error.code}
    except OSError as error:
        line = {"error": type(error).__name__}
    print(json.dumps({"started": started, "took": round(time.time() - started, 3), **line}), flush=True)
    time.sleep(3600)
""")
CLI_AT_ONCE = ["sh", "-c", 'aws sts get-caller-identity --output json 2>&1; echo "exit=$?"; exec sleep 3600']


@pytest.fixture(scope="module")
def fast(release: releases.Release, real_cluster: clusters.Cluster) -> Iterator[releases.Release]:
    """The release with proxy.podIps counting only this cluster's CNI networks: every cluster on this machine writes
    to the same /var/lib/cni/results, and another cluster's pod may hold the same IP (it would only ever make the
    proxy refuse, never serve the wrong pod: its uid is announced nowhere here)."""
    networks = "|".join(re.escape(member.record.cni_network) for member in real_cluster.nodes.values())
    release.upgrade({"proxy": {"podIps": {"cniNetworks": networks}}})
    release.wait_proxies_ready()
    real_cluster.plane.create_namespace(NAMESPACE, annotations={"iam.amazonaws.com/permitted": f"^{ROLE}$"})
    yield release
    real_cluster.plane.kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def env(real_cluster: clusters.Cluster, sts: moto.StsFront) -> dict[str, str]:
    """The guide's region, and STS (moto) as pods reach it."""
    return {"AWS_DEFAULT_REGION": real_cluster.region, "AWS_ENDPOINT_URL_STS": real_cluster.url(sts.url)}


def _pod(cluster: clusters.Cluster, name: str, command: list[str], env: dict[str, str], *, node: str,
         role: str | None = ROLE) -> None:
    manifest = pods.pod(name, cluster.images["aws-cli"].ref, command, node=node,
                        annotations={"iam.amazonaws.com/role": role} if role else {}, env=env)
    pods.create(cluster.plane, NAMESPACE, manifest)


def _logs(cluster: clusters.Cluster, name: str) -> str:
    return cluster.plane.kubectl("logs", "-n", NAMESPACE, name, check=False)


def _learned(cluster: clusters.Cluster, node: str) -> float:
    """How many requests the node's proxy served a starting pod by the IP the node gave it (its /metrics)."""
    with urllib.request.urlopen(f"http://{cluster.nodes[node].ip}:8183/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(r'^podiam_proxy_credential_lookups_total\{result="learned"\} (\S+)$', text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def _kubelet(cluster: clusters.Cluster, node: str) -> processes.Record:
    (kubelet,) = [processes.Record.from_json(data) for data in cluster.nodes[node].record.processes if data["name"] == "kubelet"]
    assert kubelet.alive()
    return kubelet


def test_served_at_the_first_instant_with_its_ip_still_on_the_way(fast: releases.Release, real_cluster: clusters.Cluster,
                                                                   env: dict[str, str], tmp_path: Path) -> None:
    """Deterministically late: the node's kubelet is held until the proxy holds the announcement, then the
    operator's pushes to that node are dropped, so the pod's entry never arrives while the AWS CLI, started as
    the container starts, asks once. A pod without a role, started alongside, is refused."""
    node, plane = "node-0", real_cluster.plane
    member, kubelet = real_cluster.nodes[node], _kubelet(real_cluster, node)
    learned_before = _learned(real_cluster, node)
    drop = ["INPUT", "-p", "tcp", "--dport", CONTROL_PORT, "-j", "DROP"]
    os.kill(kubelet.pid, signal.SIGSTOP)
    try:
        _pod(real_cluster, "cli-at-once", CLI_AT_ONCE, env, node=node)
        _pod(real_cluster, "no-role", CLI_AT_ONCE, env, node=node, role=None)
        controlplane.wait_until(lambda: fast.proxy_status(node, tmp_path / "tls").pending == 1, 60,
                                "the proxy holding the announcement of the pod", interval=0.3)
        member.exec("iptables", "-w", "5", "-I", *drop)
        os.kill(kubelet.pid, signal.SIGCONT)
        controlplane.wait_until(lambda: "exit=" in _logs(real_cluster, "cli-at-once") and "exit=" in _logs(real_cluster, "no-role"),
                                120, "both pods' AWS CLI done", interval=0.5)
        served, refused = _logs(real_cluster, "cli-at-once"), _logs(real_cluster, "no-role")
        assert "exit=0" in served and f":assumed-role/{ROLE}/" in served, served
        assert "exit=0" not in refused and "Unable to locate credentials" in refused, refused
        assert pods.get(plane, NAMESPACE, "cli-at-once")["status"].get("podIP"), "the kubelet reported the IP meanwhile"
        assert _learned(real_cluster, node) > learned_before
    finally:
        os.kill(kubelet.pid, signal.SIGCONT)
        member.exec("iptables", "-w", "5", "-D", *drop, check=False)
    # The operator's pushes resume: the pod's entry replaces the announcement.
    controlplane.wait_until(lambda: fast.proxy_status(node, tmp_path / "tls").pending == 0, 60,
                            "the announcement replaced by the pod's entry", interval=0.5)
    plane.kubectl("annotate", "pods", "-n", NAMESPACE, "cli-at-once", "iam.amazonaws.com/role-")

    def refused_now() -> bool:
        code, output = guide.caller_identity(real_cluster, NAMESPACE, "cli-at-once")
        return code != 0 and "Unable to locate credentials" in output

    controlplane.wait_until(refused_now, 30, "Unable to locate credentials once the annotation is removed", interval=0.5)
    assert guide.node_role_leaks(real_cluster) == []


def test_a_burst_of_pods_asking_once_at_their_first_instant(fast: releases.Release, real_cluster: clusters.Cluster,
                                                            env: dict[str, str]) -> None:
    """Without tricks: pods on both nodes, each asking once, botocore's way, as its container starts; every one
    gets its role the first time."""
    names = [f"burst-{i}" for i in range(8)]
    for i, name in enumerate(names):
        _pod(real_cluster, name, ["python3", "-c", ONE_ATTEMPT], env, node=f"node-{i % 2}")
    deadline = time.monotonic() + 180
    results: dict[str, dict[str, object]] = {}
    while len(results) < len(names) and time.monotonic() < deadline:
        for name in names:
            line = next((line for line in _logs(real_cluster, name).splitlines() if line.startswith("{")), None)
            if name not in results and line:
                results[name] = json.loads(line)
        time.sleep(1)
    assert len(results) == len(names), f"pods that never logged: {sorted(set(names) - set(results))}"
    failed = {name: result for name, result in results.items() if result.get("role") != ROLE}
    assert not failed, failed
    assert guide.node_role_leaks(real_cluster) == []
