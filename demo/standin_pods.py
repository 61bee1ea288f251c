"""Stand-in mode: where the pod lives, in its own network namespace (as in a cluster) or on loopback.

``netns`` (root, iptables and ip available, IP forwarding off): the pod
``aws-iam-tester`` gets a network namespace joined to this machine by a veth
pair in 10.250.0.0/30 (an address range used only inside this machine).
Node 1's address is the veth's host side, its proxy runs with ``--iptables``
like the DaemonSet, and the pod's programs use plain http://169.254.169.254,
which the proxy's DNAT rule sends to the proxy. IP forwarding stays off and a
REJECT rule for 169.254.169.254 sits first in OUTPUT and FORWARD for the
demo's lifetime, so nothing can reach a real metadata service.

``loopback`` (anything else): the pod is a process on this machine
connecting from 127.0.0.1 (the kernel's source address for 127.0.0.0/8), which
the demo reports as the pod's IP, with ``AWS_EC2_METADATA_SERVICE_ENDPOINT``
pointing at node 1's proxy: the same proxy, operator and credentials, minus
the interception.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from demo import checks
from localcluster import netns

REPO = Path(__file__).resolve().parents[1]
# Records the pid of a demo in netns mode, so that the next run can clean up
# after one that was killed (SIGKILL leaves no chance to clean up).
STATE_FILE = REPO / ".demo" / "netns-owner.pid"
METADATA = "169.254.169.254"


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def pod_environment(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The container's environment: the manifest's region, no AWS credentials or config of this machine."""
    keep = ("PATH", "LANG", "LC_ALL", "TERM")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env |= {
        "HOME": str(home),
        "AWS_DEFAULT_REGION": "ap-northeast-1",  # from the guide's manifest
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    return env | dict(extra or {})


@dataclasses.dataclass
class Place:
    mode: str
    why: str
    node_address: str
    pod_ip: str
    sts_host: str

    def proxy_args(self) -> list[str]:
        return []

    def setup(self, workdir: Path | None = None) -> None:
        pass

    def teardown(self) -> list[str]:
        """Undo :meth:`setup`; returns what could not be undone (empty: all clean)."""
        return []

    def metadata_endpoint(self, proxy_port: int) -> tuple[str, int]:
        """Where the pod's programs send metadata requests."""
        raise NotImplementedError

    def cli_environment(self, home: Path, proxy_port: int) -> dict[str, str]:
        return pod_environment(home)

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def probe(self, env: Mapping[str, str], proxy_port: int, *extra: str) -> subprocess.CompletedProcess[str]:
        host, port = self.metadata_endpoint(proxy_port)
        source = ["--source", self.pod_ip] if self.mode == "loopback" else []
        return self.run(_python_module("demo.imds_probe", host, str(port), *source, *extra), env)


@dataclasses.dataclass
class NetnsPlace(Place):
    pod: netns.Pod = dataclasses.field(default_factory=lambda: netns.Pod(
        "podiam-demo-aws-iam-tester", "pdemo0", "10.250.0.1", "10.250.0.2"))
    interface_pattern: str = "pdemo+"
    guard: netns.RejectGuard = dataclasses.field(default_factory=lambda: netns.RejectGuard("podiam-demo-guard"))

    def proxy_args(self) -> list[str]:
        return ["--iptables", "--host-interface", self.interface_pattern, "--host-ip", self.node_address]

    def setup(self, workdir: Path | None = None) -> None:
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(f"{os.getpid()}\n{workdir or ''}\n")
        self.guard.install()
        self.pod.create()

    def teardown(self) -> list[str]:
        problems = []
        # The proxy keeps its rule on exit on purpose (a restart must not open a
        # gap); removing it is the documented uninstall step.
        removed = subprocess.run(_python_module("metadata_proxy", "--remove-iptables-rules"),
                                 capture_output=True, text=True, timeout=60, cwd=REPO)
        if removed.returncode != 0:
            problems.append(f"podiam-proxy --remove-iptables-rules failed: {removed.stderr.strip()}")
        self.pod.destroy()
        self.guard.remove()
        if self.pod.exists():
            problems.append(f"network namespace {self.pod.netns} is still there")
        if netns.run("ip", "link", "show", self.pod.host_if, check=False).returncode == 0:
            problems.append(f"interface {self.pod.host_if} is still there")
        if chain_exists():
            problems.append("iptables chain PODIAM-PROXY is still there")
        if self.guard.installed():
            problems.append(f"REJECT guard {self.guard.comment} is still there")
        if netns.forwarding() != "0":
            problems.append("net.ipv4.ip_forward is on (the demo never turns it on)")
        if not problems:
            STATE_FILE.unlink(missing_ok=True)
        return problems

    def metadata_endpoint(self, proxy_port: int) -> tuple[str, int]:
        return METADATA, 80  # plain IMDS; the DNAT rule sends it to the proxy

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.pod.exec(argv, env=env, timeout=timeout)


@dataclasses.dataclass
class LoopbackPlace(Place):
    def metadata_endpoint(self, proxy_port: int) -> tuple[str, int]:
        return self.node_address, proxy_port

    def cli_environment(self, home: Path, proxy_port: int) -> dict[str, str]:
        return pod_environment(home, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{self.node_address}:{proxy_port}/"})

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def chain_exists() -> bool:
    return netns.run("iptables", "-w", "5", "-t", "nat", "-S", "PODIAM-PROXY", check=False).returncode == 0


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running demo (a reused pid of another program does not count)."""
    try:
        return b"demo" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def recover_interrupted() -> str | None:
    """Clean up after a netns-mode demo that was killed; returns what was done (None: nothing to do)."""
    pid, workdir = _owner()
    if pid is None or (_pid_alive(pid) and pid != os.getpid()):
        return None
    leftover = NetnsPlace("netns", "", "10.250.0.1", "10.250.0.2", "10.250.0.1")
    problems = leftover.teardown()
    if problems:
        raise checks.DemoFailure("could not clean up after an interrupted demo: " + "; ".join(problems))
    if workdir is not None and workdir.name.startswith("podiam-demo-"):
        shutil.rmtree(workdir, ignore_errors=True)
    return f"cleaned up after a killed demo (pid {pid}): its network namespace, veth, iptables rules, work folder"


def _owner() -> tuple[int | None, Path | None]:
    """The pid and work folder recorded by the demo that last ran in netns mode (None: none recorded)."""
    try:
        lines = STATE_FILE.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None, None
    return pid, Path(lines[1]) if len(lines) > 1 and lines[1] else None


def netns_unavailable() -> str | None:
    """Why netns mode cannot run now (None: it can)."""
    reason = netns.why_not()
    if reason:
        return reason
    if netns.forwarding() != "0":
        return "net.ipv4.ip_forward is on, so a pod's packets could leave this machine"
    owner, _ = _owner()
    if owner is not None and owner != os.getpid() and _pid_alive(owner):
        return f"another demo (pid {owner}) is running in netns mode"
    if chain_exists():
        return ("the iptables chain PODIAM-PROXY already exists (another podiam proxy on this machine, or the node "
                "tests running); the demo leaves it alone. If it is a leftover: "
                ".venv/bin/python -m metadata_proxy --remove-iptables-rules")
    return None


def choose(requested: str) -> Place:
    """``auto``: netns when possible, else loopback; ``netns`` or ``loopback``: that mode or a clear error."""
    netns_node, netns_pod = "10.250.0.1", "10.250.0.2"
    if requested in ("auto", "netns"):
        recovered = recover_interrupted() if netns.why_not() is None else None
        if recovered:
            print(f"    {recovered}", flush=True)
        reason = netns_unavailable()
        if reason is None:
            why = ("running as root with iptables and ip, IP forwarding off: the pod gets its own network namespace "
                   "and node-1's proxy intercepts 169.254.169.254 with iptables, as in a cluster")
            return NetnsPlace("netns", why, netns_node, netns_pod, netns_node)
        if requested == "netns":
            raise checks.DemoFailure(f"netns mode is not possible here: {reason}")
        why = (f"netns mode is not possible here ({reason}); loopback fallback: the pod is a process connecting "
               "from 127.0.0.1, its AWS_EC2_METADATA_SERVICE_ENDPOINT points at node-1's proxy")
    else:
        why = ("asked for with --mode loopback: the pod is a process connecting from 127.0.0.1, its "
               "AWS_EC2_METADATA_SERVICE_ENDPOINT points at node-1's proxy")
    return LoopbackPlace("loopback", why, "127.0.0.11", "127.0.0.1", "127.0.0.1")
