"""A node on this machine: veth-connected network namespaces play pods, the proxy runs in the root namespace.

Safety, for the whole test: IPv4 forwarding must be off (asserted before and
after, never changed), and REJECT rules for 169.254.169.254 sit first in
OUTPUT and FORWARD, so nothing ever reaches a real metadata service. Pods'
addresses are in 10.250.0.0/16, on veth pairs that exist only for the test;
with forwarding off their packets cannot leave the machine. Everything the
test adds (namespaces, veths, guard rules, the proxy's chain) is removed in
finalizers, also on failure.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_proxy import _iptables
from localcluster import certs, netns
from localcluster.netns import Pod, forwarding

GUARD_COMMENT = "podiam-node-test-guard"


def _why_not() -> str | None:
    reason = netns.why_not()
    return f"node tests: {reason}" if reason else None


@pytest.fixture(scope="session")
def node_safety() -> Iterator[None]:
    """Forwarding off and REJECT guards in place, for every node test."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    assert forwarding() == "0", "net.ipv4.ip_forward is on: refusing to run node tests"
    left = netns.sweep_leftovers()
    if left:
        print(f"node tests: removed what a killed earlier run left: {' '.join(left)}")
    guard = netns.RejectGuard(GUARD_COMMENT).install()
    try:
        yield
    finally:
        guard.remove()
        assert forwarding() == "0"


@pytest.fixture
def node(node_safety: None, tmp_path: Path) -> Iterator[dict[str, Pod]]:
    """Three pods: a and b on interfaces matching ``pdt+``, c on one that does not (``pdx…``)."""
    tag = secrets.token_hex(2)
    pods = {
        "a": Pod(f"podiam-a-{tag}", f"pdt{tag}a", "10.250.1.1", "10.250.1.2"),
        "b": Pod(f"podiam-b-{tag}", f"pdt{tag}b", "10.250.2.1", "10.250.2.2"),
        "c": Pod(f"podiam-c-{tag}", f"pdx{tag}c", "10.250.3.1", "10.250.3.2"),
    }
    try:
        for pod in pods.values():
            pod.create()
        yield pods
    finally:
        for pod in pods.values():
            pod.destroy()
        _iptables.remove()
        assert _iptables.installed() == []


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.make_pki(tmp_path_factory.mktemp("node-pki"))
