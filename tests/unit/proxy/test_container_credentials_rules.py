"""The container-credentials DNAT rules' argv, the node's IPv6 address they target, and the settings around them.

The IPv4 rules are exercised on real nodes (tests/e2e/test_container_credentials.py); the IPv6 ones only
here: the test nodes have no global IPv6 address.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from metadata_proxy import _iptables, _settings

pytestmark = pytest.mark.unit


def test_rules_send_the_pod_identity_address_to_the_node_port_from_any_interface() -> None:
    rule = _iptables.cc_dnat_rule("10.0.0.5", 8186)
    assert "-i" not in rule  # the token says who asks: pods behind any CNI, and host-network callers
    assert rule[rule.index("-d") + 1] == "169.254.170.23/32" and rule[rule.index("--dport") + 1] == "80"
    assert rule[-3:] == ["DNAT", "--to-destination", "10.0.0.5:8186"]
    assert _iptables.cc_jump_rule()[-2:] == ["-j", "PODIAM-CONTAINER-CREDS"]
    # Its own chain: the metadata chain keeps its single rule, and neither name is a prefix of the other's jump.
    assert _iptables.CC_CHAIN != _iptables.CHAIN and not _iptables.CC_CHAIN.startswith(_iptables.CHAIN)


def test_ipv6_rules_target_the_node_address_in_brackets() -> None:
    rule = _iptables.cc_dnat_rule("2001:db8::7", 8186, _iptables.CONTAINER_CREDENTIALS_V6)
    assert rule[rule.index("-d") + 1] == "fd00:ec2::23/128"
    assert rule[-1] == "[2001:db8::7]:8186"


def test_the_node_ipv6_address_is_a_usable_global_one(tmp_path: Path) -> None:
    table = tmp_path / "if_inet6"
    table.write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"  # loopback
        "fe8000000000000000fc00fffe000001 02 40 20 80     eth0\n"  # link-local
        "20010db8000000000000000000000009 02 40 00 a0     eth0\n"  # global but deprecated (0x20)
        "20010db8000000000000000000000007 02 40 00 80     eth0\n"
    )
    assert _iptables.node_ipv6(table) == "2001:db8::7"
    table.write_text("fe8000000000000000fc00fffe000001 02 40 20 80     eth0\n")
    assert _iptables.node_ipv6(table) is None
    assert _iptables.node_ipv6(tmp_path / "absent") is None


def test_settings() -> None:
    settings = _settings.ProxySettings(node_name="n")
    assert (settings.container_credentials, settings.container_credentials_port) == (True, 8186)
    assert settings.container_credentials_audience == "pods.eks.amazonaws.com"
    with pytest.raises(ValueError, match="--container-credentials-port must differ"):
        _settings.ProxySettings(node_name="n", container_credentials_port=8181)
    # Off, its port may be anything.
    assert not _settings.ProxySettings(node_name="n", container_credentials=False, container_credentials_port=8181).container_credentials
    parsed, _ = _settings.parse(["--no-container-credentials", "--container-credentials-audience", "sts.example"])
    assert (parsed.container_credentials, parsed.container_credentials_audience) == (False, "sts.example")
