"""``make demo`` as a user runs it: ``python -m demo`` in a subprocess of its own session.

:func:`run_demo` starts it with a run id in its environment, which every
process it starts inherits (the control plane, moto, the operator, the
proxies), so :func:`leftovers` can tell exactly which of them outlived it;
it can also interrupt the run as Ctrl-C in a terminal would (SIGINT to the
whole process group) once a given line appears.
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
from pathlib import Path

import pytest

from demo import pods
from tests.support import netns

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# The stack strips PODIAM_* and AWS_* from its children's environments, so the marker has another prefix.
MARKER = "DEMO_TEST_RUN_ID"


@dataclasses.dataclass
class DemoRun:
    returncode: int
    output: str
    run_id: str

    @property
    def workdir(self) -> Path | None:
        match = re.search(r"^work folder \(logs\): (\S+), ", self.output, re.MULTILINE)
        return Path(match.group(1)) if match else None


def _restore_sigint() -> None:
    # A terminal's Ctrl-C reaches a foreground job even when the test runner
    # itself was started with SIGINT ignored (e.g. in the background).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_demo(*args: str, interrupt_at: str | None = None, timeout: float = 240) -> DemoRun:
    run_id = uuid.uuid4().hex
    env = {**os.environ, MARKER: run_id}
    process = subprocess.Popen(
        [sys.executable, "-m", "demo", *args], cwd=REPO, env=env, text=True,
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
    return netns.why_not() is None and pods.chain_exists()


def leftovers(run: DemoRun, chain_before: bool) -> list[str]:
    """Everything the demo should have removed and did not."""
    problems = [f"process: {p}" for p in processes_of(run.run_id)]
    if run.workdir is None:
        problems.append("the demo never printed its work folder")
    elif run.workdir.exists():
        problems.append(f"work folder {run.workdir}")
    if pods.STATE_FILE.exists():
        problems.append(f"state file {pods.STATE_FILE}")
    if netns.why_not() is None:
        place = pods.NetnsPlace("netns", "", "10.250.0.1", "10.250.0.2", "10.250.0.1")
        if place.pod.exists():
            problems.append(f"network namespace {place.pod.netns}")
        if netns.run("ip", "link", "show", place.pod.host_if, check=False).returncode == 0:
            problems.append(f"interface {place.pod.host_if}")
        if place.guard.installed():
            problems.append(f"REJECT guard {place.guard.comment}")
        if pods.chain_exists() and not chain_before:
            problems.append("iptables chain PODIAM-PROXY")
        if netns.forwarding() != "0":
            problems.append("IP forwarding is on")
    return problems
