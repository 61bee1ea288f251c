"""The interception check's pure parts: /proc/net/route, longest-prefix match, iptables' -i semantics, the advice."""

from __future__ import annotations

import logging

import pytest

from metadata_proxy import _interception as ic

pytestmark = pytest.mark.unit


def hexaddr(ip: str) -> str:
    """An address as /proc/net/route prints it on a little-endian machine."""
    return "".join(f"{int(part):02X}" for part in reversed(ip.split(".")))


def table(*rows: tuple[str, str, str, int]) -> str:
    """(interface, destination, mask, metric) rows in /proc/net/route's layout."""
    lines = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"]
    for interface, destination, mask, metric in rows:
        lines.append(f"{interface}\t{hexaddr(destination)}\t00000000\t0001\t0\t0\t{metric}\t{hexaddr(mask)}\t0\t0\t0")
    return "\n".join(lines) + "\n"


# A node with flannel: the pod subnet behind the bridge cni0, the uplink eth0.
FLANNEL = table(("eth0", "0.0.0.0", "0.0.0.0", 100), ("eth0", "192.168.1.0", "255.255.255.0", 100),
                ("cni0", "10.244.1.0", "255.255.255.0", 0), ("flannel.1", "10.244.0.0", "255.255.0.0", 0))
# A node with Calico: one /32 per pod on its own veth.
CALICO = table(("ens5", "0.0.0.0", "0.0.0.0", 0), ("cali1a2b3c4d5e6", "10.10.0.7", "255.255.255.255", 0),
               ("cali9f8e7d6c5b4", "10.10.0.8", "255.255.255.255", 0), ("tunl0", "10.10.0.0", "255.255.0.0", 0))


def test_parse_routes_reads_addresses_masks_metrics_and_skips_routes_that_are_down() -> None:
    text = FLANNEL + "cni9\t0001F40A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # flags 0: not up
    routes = ic.parse_routes(text)
    assert [r.interface for r in routes] == ["eth0", "eth0", "cni0", "flannel.1"]
    cni0 = routes[2]
    assert (cni0.network, cni0.mask, cni0.prefix_length) == (0x0AF40100, 0xFFFFFF00, 24)


def test_longest_prefix_then_lowest_metric() -> None:
    routes = ic.parse_routes(FLANNEL + table(("cni1", "10.244.1.0", "255.255.255.0", 50)).split("\n", 1)[1])
    assert ic.route_for(routes, "10.244.1.5").interface == "cni0"  # /24 beats /16, metric 0 beats 50
    assert ic.route_for(routes, "10.244.7.5").interface == "flannel.1"
    assert ic.route_for(routes, "8.8.8.8").interface == "eth0"  # the default route
    assert ic.route_for(ic.parse_routes(table(("eth0", "192.168.1.0", "255.255.255.0", 0))), "8.8.8.8") is None


@pytest.mark.parametrize(("pattern", "interface", "matches"), [
    ("cali+", "cali1a2b3c4d5e6", True), ("cali+", "cni0", False), ("cni0", "cni0", True), ("cni0", "cni01", False),
    ("!eth0", "cni0", True), ("!eth0", "eth0", False), ("!eth+", "eth1", False), ("!eth+", "cbr0", True),
    ("+", "anything", True), ("eni+", "eni", True),
])
def test_interface_patterns_follow_iptables(pattern: str, interface: str, matches: bool) -> None:
    assert ic.interface_matches(pattern, interface) is matches


def test_pods_behind_a_bridge_are_missed_by_a_veth_pattern_and_the_advice_names_the_bridge() -> None:
    routes = ic.parse_routes(FLANNEL)
    found, interfaces = ic.misses("veth+", ["10.244.1.5", "10.244.1.6"], routes)
    assert found == [ic.Miss("10.244.1.5", "cni0"), ic.Miss("10.244.1.6", "cni0")]
    text = ic.describe("veth+", found, interfaces, ic.uplink(routes), bridge=lambda name: name == "cni0")
    assert "does not intercept 2 pod(s): 10.244.1.5 via cni0, 10.244.1.6 via cni0" in text
    assert "--host-interface 'veth+'" in text
    assert text.endswith("Pods are behind bridge cni0: use --host-interface cni0 or '!eth0'")
    assert ic.misses("cni0", ["10.244.1.5"], routes)[0] == []
    assert ic.misses("!eth0", ["10.244.1.5"], routes)[0] == []


def test_calico_pods_get_a_prefix_suggestion_and_ipv6_pods_are_not_judged() -> None:
    routes = ic.parse_routes(CALICO)
    assert ic.misses("cali+", ["10.10.0.7", "10.10.0.8"], routes)[0] == []
    found, interfaces = ic.misses("eni+", ["10.10.0.7", "10.10.0.8", "fd00::7"], routes)
    assert [m.ip for m in found] == ["10.10.0.7", "10.10.0.8"] and "fd00::7" not in interfaces
    assert ic.suggestion(interfaces.values(), ic.uplink(routes)) == "use --host-interface cali+ or '!ens5'"


def test_a_pod_without_any_route_is_a_miss() -> None:
    routes = ic.parse_routes(table(("eth0", "192.168.1.0", "255.255.255.0", 0)))
    found, interfaces = ic.misses("cali+", ["10.9.9.9"], routes)
    assert found == [ic.Miss("10.9.9.9", None)]
    assert "10.9.9.9 via no route" in ic.describe("cali+", found, interfaces, None, bridge=lambda _: False)
    assert ic.suggestion(interfaces.values(), None) == "check the node's routes to its pods (ip route)"


def test_the_checker_confirms_a_miss_on_two_rounds_and_logs_changes_not_every_round(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="metadata_proxy")
    ips = ["10.244.1.5"]
    now = [0.0]
    checker = ic.Checker("veth+", lambda: ips, interval=2.0, read_routes=lambda: FLANNEL, clock=lambda: now[0])
    checker.check()
    assert checker.problem is None and checker.not_intercepted == 0  # seen once: its route may be on its way
    checker.check()
    assert checker.problem is not None and "10.244.1.5 via cni0" in checker.problem and checker.not_intercepted == 1
    for _ in range(10):
        now[0] += 2.0
        checker.check()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # rate-limited: the same problem is repeated every LOG_REPEAT seconds only
    now[0] += ic.LOG_REPEAT
    checker.check()
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 2
    ips.clear()  # the pod went away
    checker.check()
    assert checker.problem is None and checker.not_intercepted == 0
    assert any("intercepted again" in r.getMessage() for r in caplog.records)


def test_the_checker_reads_this_machines_real_routing_table() -> None:
    # No assumption about this machine's routes beyond the file's format.
    routes = ic.parse_routes(ic.ROUTES.read_text())
    assert all(0 <= r.prefix_length <= 32 for r in routes)
