"""Replicas given the same --peering-priority: exactly one leads (kopf alone pauses them all, forever).

Two real operator processes on the real control plane, in a peering object of
their own; the header of /readyz says which role each one has.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import moto, processes
from localcluster import stack as stacks

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("peering-ties"), nodes=1,
                           operator_env={"PODIAM_PEERING_NAME": "podiam-ties"})
    try:
        running.start(operator=False)
        yield running
    finally:
        running.stop()


def role(process: processes.ManagedProcess) -> str:
    """What /readyz's X-Podiam-Role says (active, standby, starting), or "down"."""
    url = process.metrics_url.replace("/metrics", "/readyz")  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.headers["X-Podiam-Role"])
    except urllib.error.HTTPError as error:
        return str(error.headers["X-Podiam-Role"])
    except OSError:
        return "down"


def test_replicas_with_the_same_priority_elect_exactly_one(stack: stacks.Stack, ns: str) -> None:
    replicas = [stack.start_operator(args=["--peering-priority", "5"], wait=False) for _ in range(2)]
    stacks.wait_for(lambda: sorted(role(p) for p in replicas) == ["active", "standby"], 90,
                    "one active replica and one standby", interval=0.5)
    active, standby = sorted(replicas, key=lambda p: role(p) != "active")
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "app", role="tie-role", node=node, ip=ip)
    stack.wait_credentials(node, ip)
    time.sleep(5.0)  # no flapping: the same one still leads
    assert (role(active), role(standby)) == ("active", "standby")

    # The standby takes over when the active one goes, and serves what changes next.
    active.kill()
    stacks.wait_for(lambda: role(standby) == "active", 60, "the standby takes over", interval=0.5)
    late_ip = stack.next_ip()
    stack.create_pod(ns, "late", role="tie-role", node=node, ip=late_ip)
    stack.wait_credentials(node, late_ip)
