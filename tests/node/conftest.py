"""A node on this machine: veth-connected network namespaces play pods, the proxy runs in the root namespace.

Safety, for the whole test: IPv4 forwarding must be off (asserted before and
after, never changed), and REJECT rules for 169.254.169.254 sit first in
OUTPUT and FORWARD, so nothing ever reaches a real metadata service. Pods'
addresses are in 10.250.0.0/16, on veth pairs that exist only for the test;
with forwarding off their packets cannot leave the machine. Everything the
test adds (namespaces, veths, guard rules, the proxy's chain) is removed in
finalizers, also on failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_proxy import _iptables
from tests.support import certs

pytestmark = pytest.mark.node

GUARD_COMMENT = "podiam-node-test-guard"
GUARD = ["-d", "169.254.169.254/32", "-m", "comment", "--comment", GUARD_COMMENT, "-j", "REJECT"]


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "node tests need root (network namespaces, iptables)"
    for tool in ("iptables", "ip"):
        if shutil.which(tool) is None:
            return f"node tests need {tool} (run `make system-deps`)"
    if run("iptables", "-w", "5", "-t", "nat", "-S", "PREROUTING", check=False).returncode != 0:
        return "iptables nat table not usable here"
    return None


def forwarding() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


@pytest.fixture(scope="session")
def node_safety() -> Iterator[None]:
    """Forwarding off and REJECT guards in place, for every node test."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    assert forwarding() == "0", "net.ipv4.ip_forward is on: refusing to run node tests"
    for chain in ("OUTPUT", "FORWARD"):
        run("iptables", "-w", "5", "-I", chain, "1", *GUARD)
    try:
        yield
    finally:
        for chain in ("OUTPUT", "FORWARD"):
            while run("iptables", "-w", "5", "-C", chain, *GUARD, check=False).returncode == 0:
                run("iptables", "-w", "5", "-D", chain, *GUARD)
        assert forwarding() == "0"


@dataclasses.dataclass
class Pod:
    """A network namespace with one veth to the root namespace; its default route is the host side."""

    netns: str
    host_if: str
    host_ip: str
    pod_ip: str

    def create(self) -> Pod:
        pod_if = self.host_if + "p"
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", pod_if)
        run("ip", "link", "set", pod_if, "netns", self.netns)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{self.pod_ip}/30", "dev", pod_if],
            ["ip", "link", "set", pod_if, "up"],
            ["ip", "route", "add", "default", "via", self.host_ip],
        ):
            run("ip", "netns", "exec", self.netns, *command)
        return self

    def destroy(self) -> None:
        run("ip", "netns", "del", self.netns, check=False)  # takes the veth pair with it
        run("ip", "link", "del", self.host_if, check=False)

    def python(self, code: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python code inside the pod's namespace (as its containers would)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", code],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=str(Path(__file__).parents[2]),
        )

    def get(self, path: str, timeout: float = 2.0) -> dict[str, object]:
        """A plain ``GET http://169.254.169.254<path>`` from the pod: {"status", "body"} or {"error"}."""
        code = f"""
import http.client, json
try:
    c = http.client.HTTPConnection("169.254.169.254", 80, timeout={timeout})
    c.request("GET", {path!r})
    r = c.getresponse()
    print(json.dumps({{"status": r.status, "body": r.read().decode()}}))
except Exception as e:
    print(json.dumps({{"error": type(e).__name__ + ": " + str(e)}}))
"""
        done = self.python(code)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))


@pytest.fixture
def node(node_safety: None, tmp_path: Path) -> Iterator[dict[str, Pod]]:
    """Three pods: a and b on interfaces matching ``pdt+``, c on one that does not (``pdx…``)."""
    tag = secrets.token_hex(2)
    pods = {
        "a": Pod(f"podiam-a-{tag}", f"pdt{tag}a", "10.250.1.1", "10.250.1.2"),
        "b": Pod(f"podiam-b-{tag}", f"pdt{tag}b", "10.250.2.1", "10.250.2.2"),
        "c": Pod(f"podiam-c-{tag}", f"pdx{tag}c", "10.250.3.1", "10.250.3.2"),
    }
    try:
        for pod in pods.values():
            pod.create()
        yield pods
    finally:
        for pod in pods.values():
            pod.destroy()
        _iptables.remove()
        assert _iptables.installed() == []


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.make_pki(tmp_path_factory.mktemp("node-pki"))
