"""Network namespaces that play pods on this machine, and the guards that keep their traffic here.

A :class:`Pod` is a network namespace joined to the root namespace by one
veth pair: the host side carries ``host_ip`` (the "node" end, as a CNI's
``cali…``/``eni…`` interface would), the pod side ``pod_ip``, with a default
route through the host side. Used by the node tests (tests/node) and by
``make demo``.

Safety, for anyone using them: IPv4 forwarding must stay off (check
:func:`forwarding`; nothing here ever turns it on), so a pod's packets can
reach only addresses of this machine; and a :class:`RejectGuard` puts REJECT
rules for 169.254.169.254 first in OUTPUT and FORWARD, so nothing can ever
reach a real metadata service, even before a DNAT rule is in place. Callers
remove what they create (``Pod.destroy``, ``RejectGuard.remove``), also on
failure; both are idempotent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METADATA_ADDRESS = "169.254.169.254"


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def why_not() -> str | None:
    """Why network-namespace pods cannot run here (None: they can); :func:`forwarding` is the caller's check."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool in ("iptables", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (run `make system-deps`)"
    if run("iptables", "-w", "5", "-t", "nat", "-S", "PREROUTING", check=False).returncode != 0:
        return "the iptables nat table is not usable here"
    return None


def forwarding() -> str:
    """``/proc/sys/net/ipv4/ip_forward``: must stay "0" while pods exist."""
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


@dataclasses.dataclass
class RejectGuard:
    """REJECT rules for 169.254.169.254 first in OUTPUT and FORWARD, tagged with ``comment``."""

    comment: str
    chains: tuple[str, ...] = ("OUTPUT", "FORWARD")

    @property
    def rule(self) -> list[str]:
        return ["-d", f"{METADATA_ADDRESS}/32", "-m", "comment", "--comment", self.comment, "-j", "REJECT"]

    def install(self) -> RejectGuard:
        try:
            for chain in self.chains:
                run("iptables", "-w", "5", "-I", chain, "1", *self.rule)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> int:
        """Delete every copy of the rule; returns how many were removed."""
        removed = 0
        for chain in self.chains:
            while run("iptables", "-w", "5", "-C", chain, *self.rule, check=False).returncode == 0:
                run("iptables", "-w", "5", "-D", chain, *self.rule)
                removed += 1
        return removed

    def installed(self) -> bool:
        return any(run("iptables", "-w", "5", "-C", chain, *self.rule, check=False).returncode == 0 for chain in self.chains)


# What Pod and BridgePod are named in the tests (tests/node, tests/fault): a namespace podiam-<x>-<4 hex>, host-side
# links pd<x><4 hex>... A run killed before its finalizers leaves them behind, still routing 10.250/16 or 10.251/16.
_LEFTOVER_NETNS = re.compile(r"podiam-(a|b|c|br|f)-[0-9a-f]{1,4}")
_LEFTOVER_LINK = re.compile(r"pd[tbxf][0-9a-f]{1,4}\w*")


def sweep_leftovers() -> list[str]:
    """Remove the namespaces and links a killed earlier run left (same subnets: they would answer for its pods)."""
    removed = []
    for name in run("ip", "netns", "list", check=False).stdout.split():
        if _LEFTOVER_NETNS.fullmatch(name):
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if _LEFTOVER_LINK.fullmatch(name):
            run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


@dataclasses.dataclass
class Pod:
    """A network namespace with one veth to the root namespace; its default route is the host side."""

    netns: str
    host_if: str
    host_ip: str
    pod_ip: str
    prefix: int = 30

    @property
    def pod_if(self) -> str:
        return self.host_if + "p"

    def create(self) -> Pod:
        try:
            run("ip", "netns", "add", self.netns)
            run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.pod_if)
            run("ip", "link", "set", self.pod_if, "netns", self.netns)
            run("ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.host_if)
            run("ip", "link", "set", self.host_if, "up")
            for command in (
                ["ip", "link", "set", "lo", "up"],
                ["ip", "addr", "add", f"{self.pod_ip}/{self.prefix}", "dev", self.pod_if],
                ["ip", "link", "set", self.pod_if, "up"],
                ["ip", "route", "add", "default", "via", self.host_ip],
            ):
                run("ip", "netns", "exec", self.netns, *command)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        run("ip", "netns", "del", self.netns, check=False)  # takes the veth pair with it
        run("ip", "link", "del", self.host_if, check=False)

    def exists(self) -> bool:
        return self.netns in run("ip", "netns", "list", check=False).stdout.split()

    def exec(self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the pod's namespace (as its containers would); output captured."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True, text=True, timeout=timeout, env=None if env is None else dict(env), cwd=str(cwd or REPO),
        )

    def python(self, code: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python code inside the pod's namespace."""
        return self.exec([sys.executable, "-c", code], env=env, timeout=timeout)

    def get(self, path: str, timeout: float = 2.0) -> dict[str, object]:
        """A plain ``GET http://169.254.169.254<path>`` from the pod: {"status", "body"} or {"error"}."""
        code = f"""
import http.client, json
try:
    c = http.client.HTTPConnection({METADATA_ADDRESS!r}, 80, timeout={timeout})
    c.request("GET", {path!r})
    r = c.getresponse()
    print(json.dumps({{"status": r.status, "body": r.read().decode()}}))
except Exception as e:
    print(json.dumps({{"error": type(e).__name__ + ": " + str(e)}}))
"""
        done = self.python(code)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))


@dataclasses.dataclass
class BridgePod(Pod):
    """A pod behind a bridge, as the bridge plugin, flannel (``cni0``) and kubenet (``cbr0``) attach pods.

    The bridge ``bridge`` carries ``host_ip``; the veth's host side ``host_if``
    is a port of the bridge without an address, so the node routes the pod's
    IP through the bridge, and iptables sees the pod's packets arrive on the
    bridge, never on the veth. One pod per bridge: ``destroy`` removes both.
    """

    bridge: str = ""
    prefix: int = 24

    def create(self) -> BridgePod:
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            run("ip", "netns", "add", self.netns)
            run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.pod_if)
            run("ip", "link", "set", self.pod_if, "netns", self.netns)
            run("ip", "link", "set", self.host_if, "master", self.bridge)
            run("ip", "link", "set", self.host_if, "up")
            for command in (
                ["ip", "link", "set", "lo", "up"],
                ["ip", "addr", "add", f"{self.pod_ip}/{self.prefix}", "dev", self.pod_if],
                ["ip", "link", "set", self.pod_if, "up"],
                ["ip", "route", "add", "default", "via", self.host_ip],
            ):
                run("ip", "netns", "exec", self.netns, *command)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        super().destroy()
        run("ip", "link", "del", self.bridge, check=False)
