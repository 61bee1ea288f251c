"""The iptables rule's argv (the rules themselves are exercised in tests/node)."""

from __future__ import annotations

import pytest

from metadata_proxy import _iptables

pytestmark = pytest.mark.unit


def test_interface_patterns() -> None:
    assert _iptables.interface_match("cali+") == ["-i", "cali+"]
    assert _iptables.interface_match("!eth0") == ["!", "-i", "eth0"]


def test_dnat_rule_targets_the_host_ip_and_metadata_port() -> None:
    rule = _iptables.dnat_rule("eni+", "10.0.0.5", 8181)
    assert rule[:2] == ["-i", "eni+"]
    assert rule[rule.index("-d") + 1] == "169.254.169.254/32" and rule[rule.index("--dport") + 1] == "80"
    assert rule[-3:] == ["DNAT", "--to-destination", "10.0.0.5:8181"]
    assert _iptables.jump_rule()[-2:] == ["-j", "PODIAM-PROXY"]
