"""Crashes: the operator SIGKILLed and restarted, the active replica killed under a standby, a proxy SIGKILLed.

tests/integration/operator/test_restarts.py already shows that no pod loses
its credentials across an operator restart and that a standby takes over;
here the same faults run under the shared invariant checker, with changes
made while the operator or the proxy is down, and the recovery times are
measured (printed; run with ``-s`` to see them). The iptables rule's survival
across proxy SIGKILLs is checked on a real (test-made) node.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_proxy import _iptables, wire
from localcluster import certs, invariants, netns
from localcluster import stack as stacks
from localcluster.proxy import ProxyProcess, pod_entry, role_credentials

pytestmark = pytest.mark.fault
ACCOUNT = "123456789012"
RECOVERY_BOUND = 20.0  # seconds from the replacement's start to every change applied


def arn(role: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{role}"


def _snapshots_sent(stack: stacks.Stack, process: object) -> float:
    text = stack.operator_metrics(process)  # type: ignore[arg-type]
    return sum(float(m) for m in re.findall(r'^podiam_pushes_total\{kind="snapshot",result="ok"\} ([0-9.e+]+)$', text, re.M))


def _populate(stack: stacks.Stack, ns: str, checker: invariants.Checker, count: int, prefix: str) -> list[tuple[str, stacks.Node, str]]:
    pods = [(f"{prefix}{i}", stack.nodes[i % len(stack.nodes)], stack.next_ip()) for i in range(count)]
    for name, node, ip in pods:
        with checker.change(node.name, ip, uid=name, role_arn=arn(f"{prefix}-role-{int(name[len(prefix):]) % 3}")):
            stack.create_pod(ns, name, role=f"{prefix}-role-{int(name[len(prefix):]) % 3}", node=node, ip=ip)
    for _, node, ip in pods:
        stack.wait_credentials(node, ip)
    return pods


def _misses(poller: invariants.Poller, ips: set[str], after: float) -> list[invariants.Answer]:
    return [a for a in list(poller.answers) if a.ip in ips and a.started > after and a.document is None]


def _changes_while_down(stack: stacks.Stack, ns: str, checker: invariants.Checker, pods: list[tuple[str, stacks.Node, str]],
                        prefix: str) -> tuple[tuple[stacks.Node, str], tuple[stacks.Node, str]]:
    """Delete one pod and create another: the recovering side must apply both."""
    name, node, ip = pods.pop(0)
    with checker.change(node.name, ip, uid=None, role_arn=None):
        stack.delete_pod(ns, name)
    new_node, new_ip = stack.nodes[-1], stack.next_ip()
    with checker.change(new_node.name, new_ip, uid=f"{prefix}-new", role_arn=arn(f"{prefix}-role-new")):
        stack.create_pod(ns, f"{prefix}-new", role=f"{prefix}-role-new", node=new_node, ip=new_ip)
    return (node, ip), (new_node, new_ip)


def test_operator_sigkill_and_restart(stack: stacks.Stack, ns: str, checker: invariants.Checker) -> None:
    pods = _populate(stack, ns, checker, 6, "k")
    targets = [(n, ip) for _, n, ip in pods]
    with invariants.Poller(checker, lambda: targets, threads=2) as poller:
        checker.outage()
        killed = time.monotonic()
        stack.operator.kill()
        (gone_node, gone_ip), (new_node, new_ip) = _changes_while_down(stack, ns, checker, pods, "k")
        targets += [(gone_node, gone_ip), (new_node, new_ip)]
        started = time.monotonic()
        new = stack.start_operator()
        up = time.monotonic()  # kopf's /healthz: its start-up needs no AWS, so this comes before it may act
        stacks.wait_for(lambda: _snapshots_sent(stack, new) >= len(stack.nodes), RECOVERY_BOUND, "the new operator's snapshots")
        resynced = time.monotonic()
        checker.recovered()  # as for a standby's takeover: a leader acts again once the killed one's peering lifetime is over
        stack.wait_no_credentials(gone_node, gone_ip, timeout=RECOVERY_BOUND)
        revoked = time.monotonic()
        stack.wait_credentials(new_node, new_ip, timeout=RECOVERY_BOUND)
        served = time.monotonic()
        time.sleep(1.0)
    print(f"\noperator SIGKILL -> restart: process up (liveness) {up - started:.2f}s after start; every proxy resynced "
          f"{resynced - started:.2f}s after start; deletion made while down revoked at {revoked - started:.2f}s, "
          f"pod created while down served at {served - started:.2f}s (down {started - killed:.2f}s before the restart)")
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert _misses(poller, {ip for _, _, ip in pods}, killed) == []


def test_active_replica_killed_standby_takes_over(stack: stacks.Stack, ns: str, checker: invariants.Checker) -> None:
    pods = _populate(stack, ns, checker, 6, "h")
    active = stack.operator
    standby = stack.start_operator()  # started later: lower priority, stands by
    time.sleep(2)
    assert _snapshots_sent(stack, standby) == 0, "the standby pushed while the active replica runs"
    targets = [(n, ip) for _, n, ip in pods]
    with invariants.Poller(checker, lambda: targets, threads=2) as poller:
        checker.outage()
        killed = time.monotonic()
        active.kill()  # a crash: its peering record lingers for its lifetime (6 s here)
        (gone_node, gone_ip), (new_node, new_ip) = _changes_while_down(stack, ns, checker, pods, "h")
        targets += [(gone_node, gone_ip), (new_node, new_ip)]
        stacks.wait_for(lambda: _snapshots_sent(stack, standby) >= len(stack.nodes), 60, "the standby's snapshots")
        resynced = time.monotonic()
        checker.recovered()
        stack.wait_no_credentials(gone_node, gone_ip, timeout=RECOVERY_BOUND)
        revoked = time.monotonic()
        stack.wait_credentials(new_node, new_ip, timeout=RECOVERY_BOUND)
        served = time.monotonic()
        time.sleep(1.0)
    print(f"\nstandby takeover: active SIGKILLed -> every proxy resynced by the standby in {resynced - killed:.2f}s "
          f"(peering lifetime 6 s); deletion made meanwhile revoked at {revoked - killed:.2f}s, new pod served at {served - killed:.2f}s")
    assert resynced - killed < 30
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert _misses(poller, {ip for _, _, ip in pods}, killed) == []


def test_proxy_sigkill_and_restart_gets_its_snapshot_back(stack: stacks.Stack, ns: str, checker: invariants.Checker) -> None:
    pods = _populate(stack, ns, checker, 4, "x")
    node = stack.nodes[0]
    on_node = [(name, ip) for name, n, ip in pods if n is node]
    targets = [(n, ip) for _, n, ip in pods]
    with invariants.Poller(checker, lambda: targets, threads=2) as poller:
        killed = time.monotonic()
        node.proxy.kill()
        # While it is down, one of its pods goes and a new one comes: the snapshot it gets must say so.
        gone_name, gone_ip = on_node[0]
        with checker.change(node.name, gone_ip, uid=None, role_arn=None):
            stack.delete_pod(ns, gone_name)
        new_ip = stack.next_ip()
        with checker.change(node.name, new_ip, uid="x-new", role_arn=arn("x-role-new")):
            stack.create_pod(ns, "x-new", role="x-role-new", node=node, ip=new_ip)
        targets += [(node, new_ip)]
        time.sleep(1.0)
        down = [a for a in list(poller.answers) if a.node == node.name and a.started > killed + 0.1]
        assert down and all(a.status == 0 for a in down[-5:]), "a dead proxy's port refuses, nothing else answers"
        started = time.monotonic()
        node.proxy.start()  # comes back empty and unready
        up = time.monotonic()
        stacks.wait_for(lambda: node.proxy.health("/readyz").status == 200, RECOVERY_BOUND, "proxy ready (snapshot applied)")
        ready = time.monotonic()
        for _, ip in on_node[1:]:
            stack.wait_credentials(node, ip, timeout=RECOVERY_BOUND)
        stack.wait_credentials(node, new_ip, timeout=RECOVERY_BOUND)
        restored = time.monotonic()
        assert stack.imds(node, gone_ip).status == 404
        time.sleep(1.0)
    print(f"\nproxy SIGKILL -> restart: listening {up - started:.2f}s after start, snapshot restored (ready) "
          f"{ready - started:.2f}s after start, every pod of the node served {restored - started:.2f}s after start "
          f"(anti-entropy every {stack.anti_entropy:g}s)")
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    other_node_ips = {ip for _, n, ip in pods if n is not node}
    assert _misses(poller, other_node_ips, killed) == []


# --- the iptables rule on a real node across SIGKILLs -------------------------------------------------

GUARD_COMMENT = "podiam-fault-test-guard"


@pytest.fixture
def node_pod(tmp_path: Path) -> Iterator[netns.Pod]:
    reason = netns.why_not()
    if reason:
        pytest.skip(f"needs network namespaces and iptables: {reason}")
    assert netns.forwarding() == "0", "net.ipv4.ip_forward is on: refusing to run"
    netns.sweep_leftovers()
    guard = netns.RejectGuard(GUARD_COMMENT).install()
    tag = str(int(time.time() * 1000) % 10000)
    pod = netns.Pod(f"podiam-f-{tag}", f"pdf{tag}", "10.251.1.1", "10.251.1.2")
    try:
        pod.create()
        yield pod
    finally:
        pod.destroy()
        _iptables.remove()
        guard.remove()
        assert netns.forwarding() == "0"


def _rules() -> tuple[int, int]:
    nat = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S"], capture_output=True, text=True, check=True).stdout.splitlines()
    return (sum(1 for line in nat if line.startswith("-A PREROUTING") and "-j PODIAM-PROXY" in line),
            sum(1 for line in nat if line.startswith("-A PODIAM-PROXY")))


def test_proxy_sigkill_never_removes_or_duplicates_the_iptables_rule(node_pod: netns.Pod, tmp_path: Path) -> None:
    pki = certs.make_pki(tmp_path / "pki")
    args = ["--iptables", "--host-interface", f"{node_pod.host_if}", "--host-ip", node_pod.host_ip, "--credential-wait", "0"]
    proxy = ProxyProcess(tmp_path, pki, node_pod.host_ip, args=args).start()
    role = role_credentials("k1", "NodeRole")
    snapshot = wire.Snapshot(generation=1, roles=[role], pods=[pod_entry(node_pod.pod_ip, "k1")])
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch_rules() -> None:
        while not stop.is_set():
            seen.append(_rules())

    watcher = threading.Thread(target=watch_rules, daemon=True)
    try:
        proxy.push_snapshot(snapshot)
        assert node_pod.get("/latest/meta-data/iam/security-credentials/") == {"status": 200, "body": "NodeRole"}
        watcher.start()
        for _ in range(3):
            proxy.kill()
            # Dead: the rule still sends the pod to the (closed) proxy port. Refused, never another service.
            answer = node_pod.get("/latest/meta-data/iam/security-credentials/", timeout=1.0)
            assert "ConnectionRefused" in str(answer.get("error")), answer
            started = time.monotonic()
            proxy.start()
            # Back, empty: it serves nothing until the operator's snapshot arrives.
            assert node_pod.get("/latest/meta-data/iam/security-credentials/")["status"] == 404
            proxy.push_snapshot(snapshot)
            assert node_pod.get("/latest/meta-data/iam/security-credentials/") == {"status": 200, "body": "NodeRole"}
            print(f"\nproxy with --iptables SIGKILLed and restarted: healthy {time.monotonic() - started:.2f}s after start")
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(10)
        proxy.stop()
    assert len(seen) > 20
    assert set(seen) == {(1, 1)}, f"rule counts seen while killing and restarting: {sorted(set(seen))}"
