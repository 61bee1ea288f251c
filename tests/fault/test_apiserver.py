"""The API server restarts, and the operator's watches expire (410 Gone) while it is cut off.

The operator reaches the API server through a :class:`~tests.support.tcpgate.TcpGate`,
so a test can cut it off, change the cluster behind its back (and restart
the API server, whose fresh watch cache no longer knows the operator's
resource versions: its watches come back with 410 Gone and relist), then let
it reconnect. No revocation may be missed: a pod deleted or a binding
deleted while the operator looked away is gone from the proxies once it is
back, within the stated bound.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import invariants, moto
from tests.support import tcpgate
from localcluster import stack as stacks

pytestmark = pytest.mark.fault
ACCOUNT = "123456789012"
RECOVERY_BOUND = 15.0  # seconds from reconnection to every change applied


def arn(role: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{role}"


@pytest.fixture(scope="module")
def gate(controlplane: ControlPlane) -> Iterator[tcpgate.TcpGate]:
    url = urllib.parse.urlparse(controlplane.server)
    assert url.hostname and url.port
    with tcpgate.TcpGate((url.hostname, url.port)) as running:
        yield running


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory,
          gate: tcpgate.TcpGate) -> Iterator[stacks.Stack]:
    workdir = tmp_path_factory.mktemp("fault-apiserver")
    kubeconfig = workdir / "operator-kubeconfig"
    kubeconfig.write_text(controlplane.kubeconfig.read_text().replace(controlplane.server, f"https://{gate.address}"))
    running = stacks.Stack(controlplane, sts, workdir, nodes=2, operator_env={"KUBECONFIG": str(kubeconfig)})
    try:
        running.start()
        yield running
    finally:
        running.stop()
        gate.heal()
        if not controlplane.running().get("kube-apiserver"):
            controlplane.start_apiserver()


@pytest.fixture
def checker(stack: stacks.Stack) -> invariants.Checker:
    return invariants.Checker(stack.sts.issued_keys, grace=1.0, revoke_bound=RECOVERY_BOUND)


def _misses(poller: invariants.Poller, ips: set[str], after: float, before: float = invariants.INF) -> list[invariants.Answer]:
    return [a for a in list(poller.answers) if a.ip in ips and after < a.started < before and a.document is None]


def test_api_server_restart_loses_no_credentials_and_revocation_works_after(
    stack: stacks.Stack, ns: str, checker: invariants.Checker,
) -> None:
    pods = [(f"p{i}", stack.nodes[i % 2], stack.next_ip()) for i in range(4)]
    for name, node, ip in pods:
        with checker.change(node.name, ip, uid=name, role_arn=arn(f"restart-api-{name}")):
            stack.create_pod(ns, name, role=f"restart-api-{name}", node=node, ip=ip)
    for _, node, ip in pods:
        stack.wait_credentials(node, ip)
    with invariants.Poller(checker, lambda: [(n, ip) for _, n, ip in pods], threads=2) as poller:
        started = time.monotonic()
        stack.cp.restart_apiserver()
        restarted = time.monotonic()
        print(f"API server restart took {restarted - started:.1f}s")
        # A revocation right after the restart is applied.
        name, node, ip = pods[0]
        with checker.change(node.name, ip, uid=None, role_arn=None):
            stack.delete_pod(ns, name)
        deleted = time.monotonic()
        stack.wait_no_credentials(node, ip, timeout=RECOVERY_BOUND)
        print(f"revocation after the API server restart: {time.monotonic() - deleted:.2f}s")
        # And a new pod is served.
        new_node, new_ip = stack.nodes[1], stack.next_ip()
        with checker.change(new_node.name, new_ip, uid="after", role_arn=arn("restart-api-after")):
            stack.create_pod(ns, "after", role="restart-api-after", node=new_node, ip=new_ip)
        stack.wait_credentials(new_node, new_ip, timeout=RECOVERY_BOUND)
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    kept = {ip for _, _, ip in pods[1:]}
    assert _misses(poller, kept, after=started) == []
    assert checker.counts["served"] > 20


def test_no_revocation_is_missed_when_watches_expire_while_cut_off(
    stack: stacks.Stack, ns: str, checker: invariants.Checker, gate: tcpgate.TcpGate,
) -> None:
    node, other = stack.nodes
    ips = {name: stack.next_ip() for name in ("deleted", "unannotated", "selected", "narrowed", "kept", "finished")}
    for name, ip in ips.items():
        role = None if name == "selected" else f"cut-{name}"
        labels = {"app": "selected"} if name == "selected" else None
        where = other if name in ("kept", "finished") else node
        with checker.change(where.name, ip, uid=name, role_arn=arn(f"cut-{name}")):
            stack.create_pod(ns, name, role=role, labels=labels, node=where, ip=ip)
    stack.apply_binding(ns, "selector", {"role": "cut-selected", "podSelector": {"matchLabels": {"app": "selected"}}})
    stack.set_permitted(ns, "cut-.*")
    where_of = {name: (other if name in ("kept", "finished") else node) for name in ips}
    for name, ip in ips.items():
        stack.wait_credentials(where_of[name], ip)

    targets = [(where_of[name], ip) for name, ip in ips.items()]
    with invariants.Poller(checker, lambda: targets, threads=2) as poller:
        checker.outage()
        gate.cut()
        cut = time.monotonic()
        # While the operator is cut off, the API server restarts (a fresh watch cache:
        # the operator's resource versions are too old now) and the cluster changes.
        stack.cp.restart_apiserver()
        revoked = ("deleted", "unannotated", "selected", "narrowed", "finished")
        for name in revoked:
            with checker.change(where_of[name].name, ips[name], uid=None, role_arn=None):
                if name == "deleted":
                    stack.delete_pod(ns, name)
                elif name == "unannotated":
                    stack.annotate_pod(ns, name, {"iam.amazonaws.com/role": None})
                elif name == "selected":
                    stack.delete_binding(ns, "selector")
                elif name == "narrowed":
                    stack.set_permitted(ns, "cut-(deleted|unannotated|selected|kept|finished|newcomer)")
                else:
                    stack.delete_pod(ns, name)
        newcomer = stack.next_ip()
        with checker.change(other.name, newcomer, uid="newcomer", role_arn=arn("cut-newcomer")):
            stack.create_pod(ns, "newcomer", role="cut-newcomer", node=other, ip=newcomer)
        targets.append((other, newcomer))
        time.sleep(1.0)
        # The proxies kept serving while the operator was away (they need no API server).
        assert stack.credentials(other, ips["kept"]) is not None
        gate.heal()
        healed = time.monotonic()
        checker.recovered()
        print(f"operator cut off for {healed - cut:.1f}s (API server restarted meanwhile)")

        def all_revoked() -> bool:
            return all(stack.imds(where_of[name], ips[name]).status == 404 for name in revoked)

        stacks.wait_for(all_revoked, RECOVERY_BOUND, "every revocation made while cut off applied")
        applied = time.monotonic() - healed
        stack.wait_credentials(other, newcomer, timeout=RECOVERY_BOUND)
        served = time.monotonic() - healed
        print(f"after reconnection: revocations applied in {applied:.2f}s, the new pod served in {served:.2f}s")
        time.sleep(1.0)
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert _misses(poller, {ips["kept"]}, after=cut) == []
