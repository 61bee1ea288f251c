"""kubectl as a user would type it, with its real output on the screen."""

from __future__ import annotations

import subprocess

from demo import checks, show
from localcluster.controlplane import ControlPlane

NAMESPACE = "default"  # where the guide runs its test
ROLE_ANNOTATION = "iam.amazonaws.com/role"


def call(cp: ControlPlane, *args: str, shown: str | None = None, input: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Echo ``kubectl <args>`` (or ``shown``, the command line as typed) and run it against ``cp``; prints nothing else."""
    if shown is None:
        show.command(["kubectl", *args])
    else:
        show.line(f"kubectl {shown}")
    return subprocess.run(["kubectl", f"--kubeconfig={cp.kubeconfig}", *args], input=input,
                          capture_output=True, text=True, timeout=timeout)


def run(cp: ControlPlane, *args: str, shown: str | None = None, timeout: float = 60) -> str:
    """:func:`call`, then print its output; fails the demo if kubectl fails."""
    done = call(cp, *args, shown=shown, timeout=timeout)
    show.output(done.stdout + done.stderr)
    checks.expect(done.returncode == 0, f"kubectl {' '.join(args)} exited {done.returncode}")
    return done.stdout


def permit_roles(cp: ControlPlane) -> None:
    show.step("The guide's chapter 3: permit roles in the namespace")
    run(cp, "annotate", "namespace", NAMESPACE, "iam.amazonaws.com/permitted=.*",
        shown=f"annotate namespace {NAMESPACE} iam.amazonaws.com/permitted='.*'")
