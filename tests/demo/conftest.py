"""``make demo`` as a user runs it: ``python -m demo`` in a subprocess of its own session.

:func:`run_demo` starts it with a run id in its environment, which every
process it starts inherits (the control plane, moto, the operator and
proxies, or the nodes' kubelets, containerd and relays), so :func:`leftovers`
can tell exactly which of them outlived it; it can also interrupt the run as
Ctrl-C in a terminal would (SIGINT to the whole process group) once a given
line appears.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path


from demo import standin_pods
from localcluster import netns

REPO = Path(__file__).resolve().parents[2]
# The stack strips PODIAM_* and AWS_* from its children's environments, so the marker has another prefix.
MARKER = "DEMO_TEST_RUN_ID"
NODES_GUARD = "podiam-demo-nodes-guard"


@dataclasses.dataclass
class DemoRun:
    returncode: int
    output: str
    run_id: str

    def _paths(self, pattern: str) -> list[Path]:
        return [Path(found) for found in re.findall(pattern, self.output, re.MULTILINE)]

    @property
    def workdir(self) -> Path | None:
        found = self._paths(r"^work folder \(logs\): (\S+), ")
        return found[0] if found else None

    @property
    def cluster_dirs(self) -> list[Path]:
        """The real nodes' cluster folder (localcluster/controlplane), as the demo printed it."""
        return self._paths(r"cluster folder (\S+);")

    @property
    def node_namespaces(self) -> list[str]:
        return re.findall(r"^    node-\d+: network namespace (\S+),", self.output, re.MULTILINE)


def _restore_sigint() -> None:
    # A terminal's Ctrl-C reaches a foreground job even when the test runner
    # itself was started with SIGINT ignored (e.g. in the background).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_demo(*args: str, prefix: Sequence[str] = (), interrupt_at: str | None = None, timeout: float = 240) -> DemoRun:
    """``[prefix...] python -m demo args...``, its output as it came, interrupted at the first line starting with
    ``interrupt_at``."""
    run_id = uuid.uuid4().hex
    env = {**os.environ, MARKER: run_id}
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "demo", *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_restore_sigint,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        for line in process.stdout:
            lines.append(line)
            if interrupt_at is not None and line.startswith(interrupt_at):
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
                interrupt_at = None
            if time.monotonic() > deadline:
                break
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return DemoRun(returncode, "".join(lines), run_id)


def processes_of(run_id: str) -> list[str]:
    """Command lines of live processes that carry the run's marker."""
    found = []
    needle = f"{MARKER}={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone, or not ours to read
            continue
    return found


def chain_present() -> bool:
    return netns.why_not() is None and standin_pods.chain_exists()


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def _cgroups_of(namespace: str) -> list[Path]:
    """The node's cgroup folders (localcluster/controlplane names them /podiam-TAG-NODE, its namespace pdm-TAG-NODE)."""
    name = "podiam-" + namespace.removeprefix("pdm-")
    root = Path("/sys/fs/cgroup")  # cgroup v2 at the top, v1 under each controller
    return [path for path in (*root.glob(name), *root.glob(f"*/{name}")) if path.is_dir()]


def leftovers(run: DemoRun, chain_before: bool) -> list[str]:
    """Everything the demo should have removed and did not."""
    problems = [f"process: {p}" for p in processes_of(run.run_id)]
    if run.workdir is None:
        problems.append("the demo never printed its work folder")
    elif run.workdir.exists():
        problems.append(f"work folder {run.workdir}")
    problems += [f"cluster folder {path}" for path in run.cluster_dirs if path.exists()]
    if standin_pods.STATE_FILE.exists():
        problems.append(f"state file {standin_pods.STATE_FILE}")
    if netns.why_not() is None:
        present = _namespaces()
        problems += [f"node network namespace {name}" for name in run.node_namespaces if name in present]
        problems += [f"cgroup {path}" for name in run.node_namespaces for path in _cgroups_of(name)]
        if netns.RejectGuard(NODES_GUARD).installed():
            problems.append(f"REJECT guard {NODES_GUARD}")
        place = standin_pods.NetnsPlace("netns", "", "10.250.0.1", "10.250.0.2", "10.250.0.1")
        if place.pod.exists():
            problems.append(f"network namespace {place.pod.netns}")
        if netns.run("ip", "link", "show", place.pod.host_if, check=False).returncode == 0:
            problems.append(f"interface {place.pod.host_if}")
        if place.guard.installed():
            problems.append(f"REJECT guard {place.guard.comment}")
        if standin_pods.chain_exists() and not chain_before:
            problems.append("iptables chain PODIAM-PROXY")
        if netns.forwarding() != "0":
            problems.append("IP forwarding is on")
    return problems
