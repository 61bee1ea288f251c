"""Per-pod sessions (one AssumeRole per pod) in the hands of a hostile tenant: names and STS budgets.

Real stack with ``--per-pod-sessions`` and a small STS budget per namespace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.fault
ROLE = "per-pod-budget-role"
ROLE_ARN = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/{ROLE}"
BURST, RATE = 3, 0.5


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("per-pod-budget"), nodes=2, operator_env={
        "PODIAM_PER_POD_SESSIONS": "true", "PODIAM_STS_NAMESPACE_BURST": str(BURST), "PODIAM_STS_NAMESPACE_RATE": str(RATE),
    })
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_a_session_name_cannot_pass_for_another_namespaces(stack: stacks.Stack, ns: str) -> None:
    before = len(stack.sts.assume_role_calls(ROLE_ARN))
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "impostor", role=ROLE, node=node, ip=ip, annotations={"iam.amazonaws.com/session-name": "payments.api"})
    document = stack.wait_credentials(node, ip)
    (call,) = stack.sts.assume_role_calls(ROLE_ARN)[before:]
    assert call["RoleSessionName"] == f"{ns}.payments.api"
    assert stacks.caller_identity(stack.sts.url, document)["Arn"].endswith(f":assumed-role/{ROLE}/{ns}.payments.api")


def test_one_namespaces_pods_cannot_starve_anothers(stack: stacks.Stack, ns: str) -> None:
    before = len(stack.sts.assume_role_calls(ROLE_ARN))
    started = time.monotonic()
    for i in range(15):
        stack.create_pod(ns, f"greedy-{i}", role=ROLE, node=stack.nodes[i % 2], ip=stack.next_ip())
    victim_ns = f"{ns}-victim"
    stack.create_namespace(victim_ns, ".*")
    victim_ip = stack.next_ip()
    stack.create_pod(victim_ns, "victim", role=ROLE, node=stack.nodes[1], ip=victim_ip)
    stack.wait_credentials(stack.nodes[1], victim_ip, timeout=10)
    time.sleep(3.0)
    calls = stack.sts.assume_role_calls(ROLE_ARN)[before:]
    greedy = [c for c in calls if c["RoleSessionName"].startswith(f"{ns}.greedy-")]
    allowed = BURST + RATE * (time.monotonic() - started) + 1
    assert len(greedy) <= allowed, (len(greedy), allowed)
    assert any(c["RoleSessionName"] == f"{victim_ns}.victim" for c in calls)
    pending = [b for i in range(15) if (b := stack.binding(ns, f"greedy-{i}")) and b.get("status", {}).get("phase") == "Pending"]
    assert pending and all(b["status"]["conditions"][0]["reason"] == "StsBudget" for b in pending[-3:]), pending[-1:]
    # The greedy namespace's pods are served in the end, at its own pace.
    for i in range(15):
        stack.wait_binding_phase(ns, f"greedy-{i}", "Bound", timeout=60)
