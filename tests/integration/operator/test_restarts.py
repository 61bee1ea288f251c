"""Restarts: a proxy restarts, the operator restarts, the active replica dies and a standby takes over."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    # Its own stack: these tests kill and restart the operator.
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("restarts"), nodes=2)
    try:
        running.start()
        yield running
    finally:
        running.stop()


class Watcher:
    """Polls credentials of some pods from their source IPs in a thread; records every miss."""

    def __init__(self, stack: stacks.Stack, pods: list[tuple[stacks.Node, str]]) -> None:
        self.stack = stack
        self.pods = pods
        self.misses: list[tuple[str, int]] = []
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for node, ip in self.pods:
                status = self.stack.imds(node, ip).status
                self.checks += 1
                if status != 200:
                    self.misses.append((ip, status))
            time.sleep(0.05)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _snapshots_sent(stack: stacks.Stack, process: object) -> float:
    text = stack.operator_metrics(process)  # type: ignore[arg-type]
    return sum(float(m) for m in re.findall(r'^podiam_pushes_total\{kind="snapshot",result="ok"\} ([0-9.e+]+)$', text, re.M))


def test_restarted_proxy_gets_its_snapshot_back(stack: stacks.Stack, ns: str) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "app", role="proxy-restart-role", node=node, ip=ip)
    stack.wait_credentials(node, ip)
    stack.restart_proxy(node)
    # Anti-entropy (2 s here) finds an empty proxy and sends a snapshot.
    stack.wait_credentials(node, ip, timeout=20)
    stacks.wait_for(lambda: node.proxy.health("/readyz").status == 200, 20, "proxy ready again")


def test_operator_restart_loses_no_credentials(stack: stacks.Stack, ns: str) -> None:
    pods = [(stack.nodes[i % 2], stack.next_ip()) for i in range(6)]
    for i, (node, ip) in enumerate(pods):
        stack.create_pod(ns, f"p{i}", role=f"restart-role-{i % 3}", node=node, ip=ip)
    for node, ip in pods:
        stack.wait_credentials(node, ip)
    old = stack.operator
    with Watcher(stack, pods) as watcher:
        old.kill()
        new = stack.start_operator()
        stacks.wait_for(lambda: _snapshots_sent(stack, new) >= len(stack.nodes), 60, "the new operator's snapshots")
        time.sleep(1.0)
    assert watcher.checks > 50
    assert watcher.misses == [], watcher.misses[:10]
    # The new operator serves new pods too.
    node, ip = stack.nodes[1], stack.next_ip()
    stack.create_pod(ns, "after", role="restart-role-0", node=node, ip=ip)
    stack.wait_credentials(node, ip)


def test_standby_takes_over_and_resyncs(stack: stacks.Stack, ns: str) -> None:
    active = stack.operator
    standby = stack.start_operator()  # started later: lower priority, stands by
    time.sleep(3)
    assert _snapshots_sent(stack, standby) == 0, "the standby pushed while another replica was active"
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "before", role="ha-role", node=node, ip=ip)
    stack.wait_credentials(node, ip)
    assert _snapshots_sent(stack, standby) == 0
    started = time.monotonic()
    active.kill()  # a crash: its peering record lingers for its lifetime (6 s here)
    stacks.wait_for(lambda: _snapshots_sent(stack, standby) >= len(stack.nodes), 60, "the standby's snapshots")
    takeover = time.monotonic() - started
    assert takeover < 30, takeover
    stack.wait_credentials(node, ip)
    node2, ip2 = stack.nodes[1], stack.next_ip()
    stack.create_pod(ns, "after", role="ha-role", node=node2, ip=ip2)
    stack.wait_credentials(node2, ip2, timeout=20)


def test_assume_role_arn_chains_through_the_servers_role(stack: stacks.Stack, ns: str) -> None:
    server = "arn:aws:iam::123456789012:role/podiam-server"
    stack.operator.kill()
    before = stack.sts.assume_role_count(server)
    stack.start_operator(env={"PODIAM_ASSUME_ROLE_ARN": server})
    node, ip = stack.nodes[1], stack.next_ip()
    stack.create_pod(ns, "chained", role="chained-role", node=node, ip=ip)
    assert stack.wait_credentials(node, ip, timeout=40)["RoleName"] == "chained-role"
    assert stack.sts.assume_role_count(server) > before
