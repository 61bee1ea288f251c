"""Real processes for the tests: started, waited for, logged to a file, stopped.

Every process runs in its own session so that stopping it also stops its
children, and gets SIGKILL via PR_SET_PDEATHSIG if the test runner dies, so
an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not glibc: the atexit/fixture cleanup still applies
        pass


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """A subprocess whose output goes to ``log_path``; ``stop()`` is idempotent."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_until(self, check: Callable[[], bool], timeout: float = 30.0, what: str = "ready") -> None:
        """Poll ``check`` until it is true; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited ({self.popen and self.popen.returncode}) before {what}:\n{self.log()[-4000:]}")
            try:
                if check():
                    return
            except Exception:  # the check itself may fail while the process starts
                pass
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} not {what} after {timeout}s:\n{self.log()[-4000:]}")

    def wait_http(self, url: str, timeout: float = 30.0, status: int = 200) -> None:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == status)
            except urllib.error.HTTPError as error:
                return error.code == status

        self.wait_until(answers, timeout, what=f"answering {url}")

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.popen is not None
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean-up handlers run."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
