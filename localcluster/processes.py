"""The local cluster's one process manager: every process it starts (the
control plane, the nodes' kubelets and containerds, moto, the STS front, the
operator, the proxies, nginx for the benchmark) is a :class:`ManagedProcess`.

Each runs in its own session, logging to a file, and is stopped as a group
(it and its children). Two lifetimes:

- tied to the Python process that started it (the default: tests, the demo,
  the benchmarks): ``PR_SET_PDEATHSIG`` kills it if that process dies, even
  by SIGKILL, so an interrupted run leaves nothing behind;
- ``detached=True`` (``python -m localcluster.controlplane up``): it outlives
  the command and is stopped later from its :class:`Record` (``down``).

A :class:`Record` is a PID *and* its start time, so stopping from a record
leaves alone a process that merely reuses a recorded PID.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def _own_session() -> None:
    os.setsid()


def _own_session_dying_with_parent() -> None:
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not glibc: atexit, the fixtures and the signal handlers still clean up
        pass


class _Spawner:
    """Forks the non-detached processes from one thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
    the process: a process (re)started from a short-lived thread (say
    ``asyncio.to_thread(cp.restart_apiserver)``) would be killed with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, job: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # A daemon thread is never joined at interpreter exit, so it dies with the process.
                self._thread = threading.Thread(target=self._serve, name="localcluster-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future.result()

    def _serve(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as error:
                future.set_exception(error)


_spawner = _Spawner()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


@dataclass
class Record:
    """What identifies one started process across Python processes."""

    name: str
    pid: int
    start_time: int

    def alive(self) -> bool:
        # A zombie still has a stat file; it is as good as gone.
        if start_time(self.pid) != self.start_time:
            return False
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(str(data["name"]), int(data["pid"]), int(data["start_time"]))


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """A subprocess whose output goes to ``log_path``; ``stop()`` is idempotent.

    ``env`` defaults to this process's environment, ``cwd`` to its working
    directory; ``detached`` (see the module) outlives this process.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        *,
        detached: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.detached = detached
        self.popen: subprocess.Popen[bytes] | None = None
        self.record: Record | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        def spawn() -> subprocess.Popen[bytes]:
            with self.log_path.open("ab") as log:
                return subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    preexec_fn=_own_session if self.detached else _own_session_dying_with_parent,
                    close_fds=True,
                )

        self.popen = spawn() if self.detached else _spawner.run(spawn)
        started = start_time(self.popen.pid)
        self.record = Record(self.name, self.popen.pid, started if started is not None else -1)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.record is not None and self.record.alive()

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def wait_until(self, check: Callable[[], bool], timeout: float = 30.0, what: str = "ready") -> None:
        """Poll ``check`` until it is true; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited ({self.returncode()}) before {what}:\n{self.log_tail()}")
            try:
                if check():
                    return
            except Exception:  # the check itself may fail while the process starts
                pass
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} not {what} after {timeout}s:\n{self.log_tail()}")

    def wait_http(self, url: str, timeout: float = 30.0, status: int = 200) -> None:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == status)
            except urllib.error.HTTPError as error:
                return error.code == status

        self.wait_until(answers, timeout, what=f"answering {url}")

    def signal(self, signum: int) -> None:
        """Signal the process's group (it leads its own session)."""
        if self.alive():
            assert self.popen is not None
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean-up handlers run."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it after ``timeout``; reaped, so no zombie is left."""
        if self.popen is None:
            if self.record is not None:
                stop_record(self.record, timeout)
            return
        if self.popen.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def stop_record(record: Record, timeout: float = 10.0) -> None:
    """SIGTERM the recorded process's group, SIGKILL it after ``timeout``; never touch a reused PID."""
    if not record.alive():
        return
    _signal_group(record, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not record.alive():
            return
        time.sleep(0.05)
    _signal_group(record, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while record.alive() and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.05)


def _signal_group(record: Record, signum: int) -> None:
    try:
        # Each process leads its own session, so its group id is its pid.
        if os.getpgid(record.pid) == record.pid:
            os.killpg(record.pid, signum)
        else:
            os.kill(record.pid, signum)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: init reaps it
