"""kubectl as a user would type it, with its real output on the screen."""

from __future__ import annotations

import subprocess
from demo import checks, show
from tests.controlplane import ControlPlane


def run(cp: ControlPlane, *args: str, shown: str | None = None, timeout: float = 60) -> str:
    """Echo ``kubectl <args>`` (or ``shown``, the command line as typed), run it against ``cp``, print its output.

    Fails the demo if kubectl fails.
    """
    if shown is None:
        show.command(["kubectl", *args])
    else:
        show.line(f"kubectl {shown}")
    done = subprocess.run(["kubectl", f"--kubeconfig={cp.kubeconfig}", *args],
                          capture_output=True, text=True, timeout=timeout)
    show.output(done.stdout + done.stderr)
    checks.expect(done.returncode == 0, f"kubectl {' '.join(args)} exited {done.returncode}")
    return done.stdout
