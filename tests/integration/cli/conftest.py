"""``kubectl podiam`` against the real stack: the real console script, a kubeconfig for the real API server.

One stack per module, its operator with IRSA ServiceAccounts, a cluster default role and no
container-credentials path (so hostNetwork pods are refused, as on an IMDS-only install).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import moto
from localcluster import stack as stacks

PLUGIN = Path(sys.executable).parent / "kubectl-podiam"
POLICY = "(?!cluster-default$)[^:]*"  # this account's roles, the cluster's default excepted
_names = itertools.count()


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("cli"), nodes=2, operator_env={
        "PODIAM_IRSA_SERVICE_ACCOUNTS": "true", "PODIAM_DEFAULT_ROLE": "cluster-default",
        "PODIAM_CONTAINER_CREDENTIALS": "false",
    })
    try:
        running.start()
        yield running
    except BaseException:
        running.print_operator_logs()
        raise
    finally:
        running.stop()


@pytest.fixture
def ns(stack: stacks.Stack, request: pytest.FixtureRequest) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"c{next(_names)}-{slug}"
    stack.create_namespace(name, POLICY)
    return name


def run(stack: stacks.Stack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as kubectl runs a plugin: a process of its own with the user's kubeconfig."""
    assert PLUGIN.exists(), f"{PLUGIN} is missing: reinstall the package (make venv)"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "PODIAM_", "AWS_"))}
    if env is None:
        args = (*args, "--kubeconfig", str(stack.cp.kubeconfig))
    else:
        environment |= env
    return subprocess.run([str(PLUGIN), *args], capture_output=True, text=True, timeout=60, env=environment)


def report(stack: stacks.Stack, *args: str) -> dict[str, Any]:
    result = run(stack, *args, "-o", "json")
    assert result.returncode in (0, 2), result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def wait_report(stack: stacks.Stack, *args: str, until: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The plugin's JSON once ``until(report)`` holds (the operator writes statuses and its ConfigMap asynchronously)."""
    return stacks.wait_for(lambda: (lambda r: r if until(r) else None)(report(stack, *args)), timeout,
                           f"kubectl podiam {' '.join(args)}", interval=0.5)
