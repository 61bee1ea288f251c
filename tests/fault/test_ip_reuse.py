"""Pod IP reuse: pod A (role X) goes, pod B (no role, or role Y) gets the same IP on the same node.

B must never receive X's credentials, whatever the order in which the API
server learns of A's end and of B's IP. A poller asks from the IP without
pause through every step, and the shared checker judges each answer.
"""

from __future__ import annotations

import time

import pytest

from localcluster import invariants
from localcluster import stack as stacks

pytestmark = pytest.mark.fault
ACCOUNT = "123456789012"


def arn(role: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{role}"


@pytest.fixture
def checker(stack: stacks.Stack) -> invariants.Checker:
    # grace: the operator's reaction to a change; revoke_bound: a released IP's old role must be gone by then.
    return invariants.Checker(stack.sts.issued_keys, grace=1.0, revoke_bound=3.0)


def _wait_role(stack: stacks.Stack, node: stacks.Node, ip: str, role: str | None, timeout: float = 20.0) -> None:
    if role is None:
        stack.wait_no_credentials(node, ip, timeout)
    else:
        stacks.wait_for(lambda: (c := stack.credentials(node, ip)) and c["RoleName"] == role, timeout, f"{role} at {ip}")


@pytest.mark.parametrize("b_role", [None, "reuse-y"])
@pytest.mark.parametrize("order", ["deleted-then-reused", "finished-then-reused", "reused-while-a-still-claims-it"])
def test_the_next_pod_on_an_ip_never_gets_the_previous_pods_role(
    stack: stacks.Stack, ns: str, checker: invariants.Checker, order: str, b_role: str | None,
) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    with invariants.Poller(checker, lambda: [(node, ip)], threads=4) as poller:
        with checker.change(node.name, ip, uid="a", role_arn=arn("reuse-x")):
            stack.create_pod(ns, "a", role="reuse-x", node=node, ip=ip)
        _wait_role(stack, node, ip, "reuse-x")

        if order == "reused-while-a-still-claims-it":
            # The API server still shows A Running at the IP (its kubelet has not
            # reported yet) when B's IP arrives: two live pods claim one IP.
            with checker.change(node.name, ip, uid="b", role_arn=arn(b_role) if b_role else None):
                stack.create_pod(ns, "b", role=b_role, node=node, ip=ip)
            handed_over = time.monotonic()
            time.sleep(2.0)
            # While both claim it, nobody is served (which claim is stale cannot be told).
            assert stack.imds(node, ip).status == 404
            stack.delete_pod(ns, "a")
        else:
            with checker.change(node.name, ip, uid=None, role_arn=None):
                if order == "deleted-then-reused":
                    stack.delete_pod(ns, "a")
                else:
                    stack.finish_pod(ns, "a", "Succeeded")  # finished, still in the API with its IP
            stacks.wait_for(lambda: checker.reusable(node.name, ip), 10, "the IP reusable")
            with checker.change(node.name, ip, uid="b", role_arn=arn(b_role) if b_role else None):
                stack.create_pod(ns, "b", role=b_role, node=node, ip=ip)
            handed_over = time.monotonic()
        _wait_role(stack, node, ip, b_role)
        time.sleep(1.0)
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    late = poller.served(ip, arn("reuse-x"), after=handed_over + checker.grace)
    assert late == [], late[:3]
    assert checker.counts["requests"] > 20


def test_the_same_ip_on_two_nodes_is_two_pods(stack: stacks.Stack, ns: str, checker: invariants.Checker) -> None:
    """Pod IPs are per node here: one IP on two nodes is two pods, each served by its own node's proxy only."""
    ip = stack.next_ip()
    first, second = stack.nodes
    with invariants.Poller(checker, lambda: [(first, ip), (second, ip)], threads=2):
        with checker.change(first.name, ip, uid="a", role_arn=arn("two-x")):
            stack.create_pod(ns, "a", role="two-x", node=first, ip=ip)
        with checker.change(second.name, ip, uid="b", role_arn=arn("two-y")):
            stack.create_pod(ns, "b", role="two-y", node=second, ip=ip)
        _wait_role(stack, first, ip, "two-x")
        _wait_role(stack, second, ip, "two-y")
        time.sleep(1.0)
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
