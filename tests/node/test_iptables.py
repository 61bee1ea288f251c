"""The proxy's --iptables rule on a real (test-made) node: pods reach it at 169.254.169.254, and only pods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metadata_proxy import _iptables, wire
from localcluster import certs
from localcluster.netns import Pod, run
from localcluster.proxy import ProxyProcess, pod_entry, role_credentials

pytestmark = pytest.mark.node

CREDS = "/latest/meta-data/iam/security-credentials/"


def start_proxy(tmp_path: Path, pki: certs.Pki, host_ip: str, ports: ProxyProcess | None = None) -> ProxyProcess:
    proxy = ProxyProcess(
        tmp_path, pki, host_ip,
        metadata_port=ports.metadata_port if ports else None, control_port=ports.control_port if ports else None,
        health_port=ports.health_port if ports else None,
        args=["--iptables", "--host-interface", "pdt+", "--host-ip", host_ip, "--credential-wait", "200ms"],
    )
    return proxy.start()


def rules() -> tuple[list[str], list[str]]:
    nat = run("iptables", "-w", "5", "-t", "nat", "-S").stdout.splitlines()
    jumps = [line for line in nat if line.startswith("-A PREROUTING") and "-j PODIAM-PROXY" in line]
    ours = [line for line in nat if line.startswith("-A PODIAM-PROXY")]
    return jumps, ours


def every_podiam_rule() -> list[str]:
    """Both chains' rules and the jumps to them, in iptables and (where the node has it) ip6tables."""
    found = []
    for binary in ("iptables", "ip6tables"):
        nat = run(binary, "-w", "5", "-t", "nat", "-S", check=False).stdout.splitlines()
        found += [f"{binary} {line}" for line in nat if line.startswith("-A ") and "PODIAM-" in line]
    return found


def test_pods_reach_the_proxy_at_the_metadata_address(node: dict[str, Pod], pki: certs.Pki, tmp_path: Path) -> None:
    a, b, c = node["a"], node["b"], node["c"]
    proxy = start_proxy(tmp_path, pki, a.host_ip)
    try:
        role = role_credentials("k1", "PodRole")
        proxy.push_snapshot(wire.Snapshot(generation=1, roles=[role], pods=[pod_entry(a.pod_ip, "k1", name="pod-a")]))

        # Pod a: plain http://169.254.169.254 reaches the proxy, which knows it by its IP.
        assert a.get(CREDS) == {"status": 200, "body": "PodRole"}
        document = a.get(CREDS + "PodRole")
        assert document["status"] == 200
        assert json.loads(str(document["body"]))["AccessKeyId"] == role.access_key_id

        # Pod b: same interface pattern, reaches the proxy, but it is nobody the operator told about.
        answer = b.get(CREDS + "PodRole")
        assert answer["status"] == 404 and "no pod known at 10.250.2.2" in str(answer["body"])

        # Pod c: an interface outside --host-interface: no DNAT, and with forwarding
        # off (and the guard) its packets go nowhere.
        assert "error" in c.get(CREDS, timeout=1.0)

        # The node's own metadata paths are not for pods.
        assert a.get("/latest/user-data")["status"] == 404
    finally:
        proxy.stop()


def test_unmodified_botocore_in_a_pod_uses_the_default_endpoint(node: dict[str, Pod], pki: certs.Pki, tmp_path: Path) -> None:
    a = node["a"]
    proxy = start_proxy(tmp_path, pki, a.host_ip)
    try:
        role = role_credentials("k1", "PodRole")
        proxy.push_snapshot(wire.Snapshot(generation=1, roles=[role], pods=[pod_entry(a.pod_ip, "k1")]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= {"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "HOME": str(tmp_path)}
        done = a.python(
            "import botocore.session, json; c = botocore.session.get_session().get_credentials();"
            "print(json.dumps(c and [c.method, c.get_frozen_credentials().access_key]))",
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == ["iam-role", role.access_key_id]
    finally:
        proxy.stop()


def test_rules_are_idempotent_kept_across_restarts_and_removed_explicitly(node: dict[str, Pod], pki: certs.Pki, tmp_path: Path) -> None:
    a = node["a"]
    proxy = start_proxy(tmp_path, pki, a.host_ip)
    role = role_credentials("k1", "PodRole")
    snapshot = wire.Snapshot(generation=1, roles=[role], pods=[pod_entry(a.pod_ip, "k1")])
    try:
        proxy.push_snapshot(snapshot)
        jumps, ours = rules()
        assert len(jumps) == 1 and len(ours) == 1
        assert f"--to-destination {a.host_ip}:{proxy.metadata_port}" in ours[0] and "-i pdt+" in ours[0]

        # Stopped: the rule stays, so the pod gets a refusal from the closed port,
        # never a path to the node's own metadata service.
        proxy.stop()
        assert rules() == (jumps, ours)
        assert "ConnectionRefused" in str(a.get(CREDS).get("error"))

        # Restarted (twice): still exactly one jump and one rule.
        for _ in range(2):
            proxy = start_proxy(tmp_path, pki, a.host_ip, ports=proxy)
            assert rules() == (jumps, ours)
            proxy.stop()
        proxy = start_proxy(tmp_path, pki, a.host_ip, ports=proxy)
        proxy.push_snapshot(snapshot)
        assert a.get(CREDS) == {"status": 200, "body": "PodRole"}
    finally:
        proxy.stop()

    # Duplicates and a stale target (left by hand or an older version) are repaired on start.
    run("iptables", "-w", "5", "-t", "nat", "-A", "PODIAM-PROXY", *_iptables.dnat_rule("pdt+", a.host_ip, 1))
    run("iptables", "-w", "5", "-t", "nat", "-A", "PREROUTING", *_iptables.jump_rule())
    proxy = start_proxy(tmp_path, pki, a.host_ip, ports=proxy)
    proxy.stop()
    assert rules() == (jumps, ours)

    # Uninstall: the documented command removes everything (the container-credentials chain too); the pod then
    # reaches nothing.
    present = every_podiam_rule()
    assert len(present) >= 5, present  # metadata: a jump and a DNAT; container credentials: two jumps and a DNAT
    done = subprocess.run([sys.executable, "-m", "metadata_proxy", "--remove-iptables-rules"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"removed {len(present)} " in done.stdout, (done.stdout, present)
    assert rules() == ([], []) and every_podiam_rule() == []
    assert run("iptables", "-w", "5", "-t", "nat", "-S", "PODIAM-PROXY", check=False).returncode != 0
    assert "error" in a.get(CREDS, timeout=1.0)
    again = subprocess.run([sys.executable, "-m", "metadata_proxy", "--remove-iptables-rules"], capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and "removed 0" in again.stdout


def test_a_negated_interface_pattern(node: dict[str, Pod], pki: certs.Pki, tmp_path: Path) -> None:
    """``--host-interface '!<if>'`` (the guide's '!eth0'): every interface but that one is a pod's."""
    a, c = node["a"], node["c"]
    excluded = c.host_if
    proxy = ProxyProcess(
        tmp_path, pki, a.host_ip,
        args=["--iptables", "--host-interface", f"!{excluded}", "--host-ip", a.host_ip, "--credential-wait", "0"],
    ).start()
    try:
        proxy.push_snapshot(wire.Snapshot(generation=1, roles=[role_credentials("k1", "PodRole")], pods=[pod_entry(a.pod_ip, "k1")]))
        _, ours = rules()
        assert len(ours) == 1 and f"! -i {excluded}" in ours[0]
        assert a.get(CREDS) == {"status": 200, "body": "PodRole"}
        assert "error" in c.get(CREDS, timeout=1.0)
    finally:
        proxy.stop()
