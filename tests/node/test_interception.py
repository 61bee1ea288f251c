"""A --host-interface that misses pods is never silent: the proxy's /readyz says so, its log and metric say which and what to set.

Real routes and a real rule: pods are network namespaces on veths (``pdt…``
matched by ``pdt+``, ``pdx…`` not), and one behind a bridge (``pdb…``), as
the bridge plugin, flannel and kubenet attach pods, where iptables sees the
bridge and never the veth.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_proxy import _iptables, wire
from localcluster import certs
from localcluster.netns import BridgePod, Pod
from localcluster.proxy import ProxyProcess, pod_entry, role_credentials
from localcluster.stack import wait_for

pytestmark = pytest.mark.node

CREDS = "/latest/meta-data/iam/security-credentials/"


def start_proxy(tmp_path: Path, pki: certs.Pki, host_ip: str, pattern: str, *extra: str) -> ProxyProcess:
    return ProxyProcess(
        tmp_path, pki, host_ip,
        args=["--iptables", "--host-interface", pattern, "--host-ip", host_ip, "--credential-wait", "0",
              "--interception-check-interval", "0.2", *extra],
    ).start()


def wait_readyz(proxy: ProxyProcess, status: int, timeout: float = 10.0) -> str:
    return wait_for(lambda: (r := proxy.health("/readyz")).status == status and r.text, timeout, f"/readyz {status}")


def readiness_logged(proxy: ProxyProcess) -> list[dict[str, object]]:
    """The details behind /readyz's status word: the proxy logs them whenever the word changes."""
    entries = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    return [entry for entry in entries if str(entry.get("message", "")).startswith("readiness: ")]


def not_intercepted(proxy: ProxyProcess) -> float:
    line = next(line for line in proxy.metrics().splitlines() if line.startswith("podiam_proxy_pods_not_intercepted "))
    return float(line.split()[1])


@pytest.fixture
def bridged(node_safety: None) -> Iterator[BridgePod]:
    """A pod behind bridge pdb…, its veth named pdt… (so ``pdt+`` matches the veth, never the bridge)."""
    tag = secrets.token_hex(2)
    pod = BridgePod(f"podiam-br-{tag}", f"pdt{tag}v", "10.250.9.1", "10.250.9.2", bridge=f"pdb{tag}")
    try:
        yield pod.create()
    finally:
        pod.destroy()
        _iptables.remove()


def test_a_pattern_that_misses_a_pod_makes_the_proxy_unready_and_says_why(node: dict[str, Pod], pki: certs.Pki, tmp_path: Path) -> None:
    a, c = node["a"], node["c"]
    proxy = start_proxy(tmp_path, pki, a.host_ip, "pdt+")
    try:
        role = role_credentials("k1", "PodRole")
        proxy.push_snapshot(wire.Snapshot(generation=1, roles=[role], pods=[pod_entry(a.pod_ip, "k1")]))
        assert wait_readyz(proxy, 200) == "ready\n"
        assert not_intercepted(proxy) == 0

        # Pod c sits on pdx…, which pdt+ does not match: its requests never reach the proxy.
        proxy.push_snapshot(wire.Snapshot(generation=2, roles=[role], pods=[pod_entry(a.pod_ip, "k1"), pod_entry(c.pod_ip, "k1")]))
        assert wait_readyz(proxy, 503) == "not ready: interception\n"  # to the network, a status word; the pods to the log
        detail = str(readiness_logged(proxy)[-1]["detail"])
        assert detail.startswith(f"the iptables rule (--host-interface 'pdt+') does not intercept 1 pod(s): {c.pod_ip} via {c.host_if}")
        assert "use --host-interface pd+" in detail
        assert not_intercepted(proxy) == 1
        assert "error" in c.get(CREDS, timeout=1.0)  # what the check predicted: the rule does not see pod c
        assert a.get(CREDS) == {"status": 200, "body": "PodRole"}  # still served: only readiness says no
        wait_for(lambda: "pods not intercepted" in proxy.log(), 5, "the warning in the log")

        # The pod goes away: ready again.
        proxy.push_snapshot(wire.Snapshot(generation=3, roles=[role], pods=[pod_entry(a.pod_ip, "k1")]))
        wait_readyz(proxy, 200)
        assert not_intercepted(proxy) == 0
        wait_for(lambda: "every pod is intercepted again" in proxy.log(), 5, "the all-clear in the log")
    finally:
        proxy.stop()


def test_behind_a_bridge_the_veth_pattern_intercepts_nothing_and_the_advice_fixes_it(
    bridged: BridgePod, pki: certs.Pki, tmp_path: Path,
) -> None:
    # The case: pods behind the bridge, the rule on the veths. A pod with no role would
    # have reached the node's metadata service; here forwarding is off and the guard rejects.
    snapshot = wire.Snapshot(generation=1, roles=[role_credentials("k1", "PodRole")], pods=[pod_entry(bridged.pod_ip, "k1")])
    proxy = start_proxy(tmp_path, pki, bridged.host_ip, "pdt+")
    try:
        proxy.push_snapshot(snapshot)
        assert wait_readyz(proxy, 503) == "not ready: interception\n"
        text = str(readiness_logged(proxy)[-1]["detail"])
        assert f"{bridged.pod_ip} via {bridged.bridge}" in text
        assert f"Pods are behind bridge {bridged.bridge}: use --host-interface {bridged.bridge} or '!" in text
        assert "error" in bridged.get(CREDS, timeout=1.0)
        logged = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
        assert any(entry.get("message", "").startswith("pods not intercepted") for entry in logged)
    finally:
        proxy.stop()

    # The suggested pattern: the bridge. Ready, and the pod is served through it.
    proxy = start_proxy(tmp_path, pki, bridged.host_ip, bridged.bridge)
    try:
        proxy.push_snapshot(snapshot)
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # stays ready over several checks
            assert proxy.health("/readyz").status == 200
            time.sleep(0.1)
        assert bridged.get(CREDS) == {"status": 200, "body": "PodRole"}
        assert not_intercepted(proxy) == 0
    finally:
        proxy.stop()


def test_the_check_can_be_turned_off(node: dict[str, Pod], pki: certs.Pki, tmp_path: Path) -> None:
    a, c = node["a"], node["c"]
    proxy = start_proxy(tmp_path, pki, a.host_ip, "pdt+", "--no-interception-check")
    try:
        proxy.push_snapshot(wire.Snapshot(generation=1, roles=[role_credentials("k1", "R")], pods=[pod_entry(c.pod_ip, "k1")]))
        time.sleep(0.6)
        assert proxy.health("/readyz").status == 200
        assert "interception check off" in proxy.log()
    finally:
        proxy.stop()
