"""The harness starts fast, and leaves nothing behind: not after `down`, not
when its owner is killed, not when a pytest session gets SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from localcluster import processes
from localcluster.controlplane import ControlPlane, KubectlError, build, lifetime, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _records(directory: Path) -> list[processes.Record]:
    state = json.loads((directory / "controlplane.json").read_text())
    return [processes.Record.from_json(d) for d in state["processes"]]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_up_status_down(tmp_path: Path, controlplane_binary: Path) -> None:
    directory = tmp_path / "cp"
    began = time.monotonic()
    up = _python("-m", "localcluster.controlplane", "up", "--dir", str(directory))
    elapsed = time.monotonic() - began
    assert up.returncode == 0, up.stderr
    records = _records(directory)
    try:
        assert {r.name for r in records} == {"etcd", "kube-apiserver", "kube-controller-manager"}
        # `up` returned and its processes outlive it.
        assert all(r.alive() for r in records)
        assert elapsed < 15, f"warm start to ready took {elapsed:.1f}s"
        assert f"KUBECONFIG={directory / 'kubeconfig'}" in up.stdout
        result = subprocess.run(["kubectl", f"--kubeconfig={directory / 'kubeconfig'}", "get", "ns", "default", "-o", "name"],
                                capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == "namespace/default", result.stderr
        status = _python("-m", "localcluster.controlplane", "status", "--dir", str(directory))
        assert status.returncode == 0 and json.loads(status.stdout)["running"] == {
            "etcd": True, "kube-apiserver": True, "kube-controller-manager": True}
        # A second `up` in the same folder refuses rather than orphaning the first.
        again = _python("-m", "localcluster.controlplane", "up", "--dir", str(directory))
        assert again.returncode == 1 and "already running" in again.stderr
        attached = ControlPlane.attach(directory)
        assert attached.api("GET", "/api/v1/namespaces/default")["metadata"]["name"] == "default"
    finally:
        down = _python("-m", "localcluster.controlplane", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert not any(r.alive() for r in records)
    assert "stopped: kube-controller-manager, kube-apiserver, etcd" in down.stderr
    assert not (directory / "controlplane.json").exists()
    # `down` again is harmless.
    assert _python("-m", "localcluster.controlplane", "down", "--dir", str(directory)).returncode == 0


def test_down_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = processes.start_time(bystander.pid)
        assert started is not None
        # A record with this PID but another start time is someone else's process.
        (tmp_path / "controlplane.json").write_text(json.dumps({"processes": [
            {"name": "etcd", "pid": bystander.pid, "start_time": started - 1}]}))
        down = _python("-m", "localcluster.controlplane", "down", "--dir", str(tmp_path))
        assert down.returncode == 0 and "nothing was running" in down.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_killed_owner_leaves_no_processes(tmp_path: Path, controlplane_binary: Path) -> None:
    """A Python process holding a (non-detached) control plane is SIGKILLed: its processes die too."""
    directory = tmp_path / "cp"
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""\
            import sys, time
            from pathlib import Path
            from localcluster.controlplane import ControlPlane
            ControlPlane.start(Path({str(directory)!r}))
            print("ready", flush=True)
            time.sleep(600)
            """)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert owner.stdout is not None
    try:
        line = owner.stdout.readline()
        assert line.strip() == "ready", owner.stderr.read() if owner.stderr else ""
        records = _records(directory)
        assert all(r.alive() for r in records)
    finally:
        owner.kill()
        owner.wait()
    wait_until(lambda: not any(r.alive() for r in records), 10, "control plane processes gone after owner was killed")


def test_sigterm_to_pytest_cleans_up(tmp_path: Path, controlplane_binary: Path) -> None:
    """A pytest session using the fixture, sent SIGTERM mid-test, stops its processes and removes its folder."""
    marker = tmp_path / "started.json"
    test_file = tmp_path / "test_sleeper.py"
    test_file.write_text(textwrap.dedent(f"""\
        import json, time
        from pathlib import Path

        def test_sleep(controlplane):
            state = json.loads((controlplane.dir / "controlplane.json").read_text())
            Path({str(marker)!r}).write_text(json.dumps({{"dir": str(controlplane.dir), "processes": state["processes"]}}))
            time.sleep(300)
        """))
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.cluster_plugin", "--rootdir", str(REPO),
         "-c", str(REPO / "pyproject.toml"), str(test_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_until(marker.exists, 60, "the inner session's control plane")
        started = json.loads(marker.read_text())
        records = [processes.Record.from_json(d) for d in started["processes"]]
        assert all(r.alive() for r in records)
        session.send_signal(signal.SIGTERM)
        output, _ = session.communicate(timeout=60)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert not any(r.alive() for r in records), output
    assert not Path(started["dir"]).exists(), output
    assert session.returncode != 0  # interrupted, not passed


def test_folders_of_killed_sessions_are_swept(tmp_path: Path) -> None:
    """A session killed outright cannot clean up; the next one removes its folder, and only such folders."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = Path(tempfile.mkdtemp(prefix="podiam-controlplane-"))
    (orphan / "owner.json").write_text(json.dumps({"name": "pytest", "pid": dead.pid, "start_time": 1}))
    alive = Path(tempfile.mkdtemp(prefix="podiam-controlplane-"))
    me = processes.start_time(os.getpid())
    (alive / "owner.json").write_text(json.dumps({"name": "pytest", "pid": os.getpid(), "start_time": me}))
    try:
        lifetime.sweep_orphaned_dirs()
        assert not orphan.exists()
        assert alive.exists()
    finally:
        shutil.rmtree(orphan, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)


def test_binary_is_cached_outside_the_repository(controlplane_binary: Path) -> None:
    assert REPO not in controlplane_binary.parents
    assert controlplane_binary == build.binary_path()
    info = json.loads((controlplane_binary.parent / "build-info.json").read_text())
    assert info["kube_version"] == build.kube_version()
    for command in build.COMMANDS:
        assert (controlplane_binary.parent / command).resolve() == controlplane_binary.resolve()


def test_private_control_planes_are_independent(
    controlplane: ControlPlane, make_controlplane: Callable[..., ControlPlane]
) -> None:
    private = make_controlplane()
    assert private.server != controlplane.server and private.dir != controlplane.dir
    private.create_namespace("only-here")
    assert private.kubectl("get", "ns", "only-here", "-o", "name").strip() == "namespace/only-here"
    with pytest.raises(KubectlError, match="NotFound"):
        controlplane.kubectl("get", "ns", "only-here")
