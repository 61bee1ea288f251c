"""Does the iptables rule see the pods? Each pushed pod's interface, against ``--host-interface``.

iptables' ``-i`` matches the interface a packet arrived on. A pod's packets
arrive on the interface the node routes the pod's IP through: its own veth
with Calico (``cali…``), the AWS VPC CNI (``eni…``) or Cilium with endpoint
routes (``lxc…``); the bridge with the bridge plugin and flannel (``cni0``),
kubenet (``cbr0``) or Weave (``weave``), not the veth behind it. A pattern
that matches none of them intercepts nothing, and a pod with no role then
reaches the node's own metadata service and the node role's credentials.

So the proxy looks each pushed pod's IP up in the node's main routing table
(``/proc/net/route``: the proxy runs on the host network) by longest prefix,
and matches the interface with iptables' own rules (a trailing ``+`` is a
prefix, a leading ``!`` negates). Pure functions here; :class:`Checker` runs
them periodically for the health port and the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

ROUTES = Path("/proc/net/route")
_RTF_UP = 0x0001
LOG_REPEAT = 300.0  # seconds between repeats of an unchanged warning


@dataclasses.dataclass(frozen=True)
class Route:
    interface: str
    network: int
    mask: int
    metric: int

    @property
    def prefix_length(self) -> int:
        return bin(self.mask).count("1")


def _address(hex_text: str) -> int:
    # /proc/net/route prints each address (network byte order in memory) as a host-order u32.
    return int.from_bytes(int(hex_text, 16).to_bytes(4, sys.byteorder), "big")


def parse_routes(text: str) -> list[Route]:
    """The usable IPv4 routes of ``/proc/net/route`` text."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or not int(fields[3], 16) & _RTF_UP:
            continue
        routes.append(Route(fields[0], _address(fields[1]), _address(fields[7]), int(fields[6])))
    return routes


def route_for(routes: Iterable[Route], ip: str) -> Route | None:
    """The route the kernel would pick for ``ip`` in the main table: longest prefix, then lowest metric."""
    address = int(ipaddress.IPv4Address(ip))
    best: Route | None = None
    for route in routes:
        if address & route.mask != route.network & route.mask:
            continue
        if best is None or (route.prefix_length, -route.metric) > (best.prefix_length, -best.metric):
            best = route
    return best


def interface_matches(pattern: str, interface: str) -> bool:
    """iptables' ``[!] -i pattern``: a trailing ``+`` matches any name with that prefix."""
    negated = pattern.startswith("!")
    body = pattern[1:] if negated else pattern
    hit = interface.startswith(body[:-1]) if body.endswith("+") else interface == body
    return hit != negated


@dataclasses.dataclass(frozen=True)
class Miss:
    ip: str
    interface: str | None  # None: no route at all


def misses(pattern: str, ips: Iterable[str], routes: list[Route]) -> tuple[list[Miss], dict[str, str | None]]:
    """Pods whose route the pattern does not match, and every IPv4 pod's interface (for the suggestion)."""
    found: list[Miss] = []
    interfaces: dict[str, str | None] = {}
    for ip in ips:
        if ipaddress.ip_address(ip).version != 4:
            continue  # the rule is IPv4 (169.254.169.254): an IPv6-only pod never reaches it
        route = route_for(routes, ip)
        interface = route.interface if route is not None else None
        interfaces[ip] = interface
        if interface is None or not interface_matches(pattern, interface):
            found.append(Miss(ip, interface))
    return sorted(found, key=lambda m: ipaddress.ip_address(m.ip)), interfaces


def uplink(routes: Iterable[Route]) -> str | None:
    """The interface of the default route: the node's own, never a pod's."""
    defaults = [r for r in routes if r.mask == 0]
    return min(defaults, key=lambda r: r.metric).interface if defaults else None


def suggestion(interfaces: Iterable[str | None], node_uplink: str | None) -> str:
    """A ``--host-interface`` that matches every pod seen: their one interface, or their common prefix with ``+``."""
    names = sorted({name for name in interfaces if name})
    options = []
    if len(names) == 1:
        options.append(names[0])
    elif names:
        prefix = os.path.commonprefix(names)
        if prefix:
            options.append(prefix + "+")
    if node_uplink and node_uplink not in names:
        options.append(f"'!{node_uplink}'")
    if not options:
        return "check the node's routes to its pods (ip route)"
    return "use --host-interface " + " or ".join(options)


def is_bridge(interface: str) -> bool:
    return Path("/sys/class/net", interface, "bridge").is_dir()


def describe(pattern: str, found: list[Miss], interfaces: dict[str, str | None], node_uplink: str | None,
             bridge: Callable[[str], bool] = is_bridge) -> str:
    """One paragraph for /readyz and the log: which pods, which interfaces, what to set."""
    shown = ", ".join(f"{m.ip} via {m.interface or 'no route'}" for m in found[:5]) + (" ..." if len(found) > 5 else "")
    behind = [f"bridge {name}" if bridge(name) else name for name in sorted({n for n in interfaces.values() if n})]
    return (
        f"the iptables rule (--host-interface {pattern!r}) does not intercept {len(found)} pod(s): {shown}; "
        f"their 169.254.169.254 requests bypass this proxy and may reach the node's own metadata service and "
        f"credentials. Pods are behind {', '.join(behind) or 'no route'}: {suggestion(interfaces.values(), node_uplink)}"
    )


class Checker:
    """Re-checks every ``interval`` seconds; ``problem`` is None while every pushed pod is intercepted."""

    def __init__(self, pattern: str, pod_ips: Callable[[], Iterable[str]], *, interval: float,
                 read_routes: Callable[[], str] = ROUTES.read_text, clock: Callable[[], float] = time.monotonic) -> None:
        self.pattern = pattern
        self.pod_ips = pod_ips
        self.interval = interval
        self.read_routes = read_routes
        self.clock = clock
        self.problem: str | None = None
        self.not_intercepted = 0
        self._pending: frozenset[Miss] = frozenset()
        self._logged: tuple[str | None, float] = (None, 0.0)

    def check(self) -> None:
        """One round. A miss counts once two rounds in a row saw it: a pod's route may come a moment after its IP."""
        routes = parse_routes(self.read_routes())
        found, interfaces = misses(self.pattern, self.pod_ips(), routes)
        confirmed = [m for m in found if m in self._pending]
        self._pending = frozenset(found)
        self.not_intercepted = len(confirmed)
        self.problem = describe(self.pattern, confirmed, interfaces, uplink(routes)) if confirmed else None
        self._log()

    def _log(self) -> None:
        last, when = self._logged
        now = self.clock()
        if self.problem == last and (self.problem is None or now - when < LOG_REPEAT):
            return
        if self.problem is not None:
            logger.warning("pods not intercepted: %s", self.problem)
        elif last is not None:
            logger.info("every pod is intercepted again", extra={"host_interface": self.pattern})
        self._logged = (self.problem, now)

    async def run(self) -> None:
        while True:
            try:
                self.check()
            except (OSError, ValueError) as error:  # an unreadable or odd routing table: say so, keep serving
                self.problem = f"cannot check the pods' routes ({ROUTES}): {error}"
                self._log()
            await asyncio.sleep(self.interval)
