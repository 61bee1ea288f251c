"""The local cluster's network: one network namespace per node, joined by a switch.

Layout (``TAG`` is a per-cluster random tag, ``X`` a free /24 of 10.200.0.0/16)::

    root namespace ── pdmTAGr 10.200.X.1 ─┐
                                          │ bridge br0 in namespace pdm-TAG-sw (L2 only)
    node namespace pdm-TAG-NODE ── eth0 10.200.X.(10+i)
        cni0 10.244.P.1/24 (the CNI bridge) ── pods 10.244.P.0/24 (P: the node's /24 of the cluster's /20)
        lo: 127.0.0.1, 10.199.0.1 (relays to the root namespace's loopback), 169.254.169.254 (the node's metadata service)

Safety, and why it holds:
- IP forwarding stays 0 in the root namespace: nothing here writes it, and the
  root namespace only ever talks to the nodes on their own subnet (no routing).
  Inside a node namespace the CNI bridge plugin turns it on (``isGateway``);
  that is the node routing its pods, as on a real node.
- No namespace has a route off this machine: nodes have no default route, only
  their subnet, the other nodes' pod subnets (via those nodes) and the service
  range (so the kubernetes Service's DNAT can apply). The switch has no address.
- The root namespace accepts nothing the nodes start: an INPUT rule drops every
  new connection from the switch (replies to the root namespace's own
  connections, the API server dialling kubelets and webhooks, still pass). It
  routes each node's pod subnet through that node, to send only; the routes
  go with its switch port. Nodes reach the
  API server and test servers through relays whose listening sockets live in
  the node namespace (``relay.py``).
- Each node's 169.254.169.254 is an address on that node's own loopback, so its
  stand-in metadata service is reachable only inside it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import subprocess
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
SWITCH_SUBNETS = ipaddress.IPv4Network("10.200.0.0/16")
POD_SUBNETS = ipaddress.IPv4Network("10.244.0.0/16")
# Each cluster takes a /20 of it (16 nodes of /24): the root namespace routes every cluster's pod subnets,
# so two clusters on this machine at once must not share one.
POD_RANGE_PREFIX = 20
SERVICE_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
# On every node's loopback: relays to the root namespace listen here (same port
# numbers as the root loopback's), so one URL works from every node and pod.
HOST_SERVICES_ADDRESS = "10.199.0.1"
METADATA_ADDRESS = "169.254.169.254"
CONTAINER_CREDENTIALS_ADDRESS = "169.254.170.23"
NODE_INTERFACE = "eth0"
POD_BRIDGE = "cni0"


class NetworkError(RuntimeError):
    pass


def run(*argv: str, check: bool = True, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def in_netns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in ``netns`` (network only: ``nsenter --net`` keeps the host's mounts)."""
    return run("nsenter", f"--net={NETNS_DIR / netns}", *argv, check=check)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def delete_netns(name: str) -> None:
    """Remove a namespace; its interfaces (and their veth peers elsewhere) go with it."""
    if netns_exists(name):
        run("ip", "netns", "del", name, check=False)


def _root_addresses() -> list[ipaddress.IPv4Interface]:
    out = run("ip", "-4", "-o", "addr", "show").stdout
    return [ipaddress.IPv4Interface(line.split()[3]) for line in out.splitlines() if " inet " in line]


def _free_switch_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.200.0.0/16 that no address of the root namespace is in (another cluster, a VPN)."""
    taken = {a.network for a in _root_addresses()} | {ipaddress.IPv4Network(f"{a.ip}/24", strict=False) for a in _root_addresses()}
    candidates = [s for s in SWITCH_SUBNETS.subnets(new_prefix=24) if not any(s.overlaps(t) for t in taken)]
    if not candidates:
        raise NetworkError("no free /24 in 10.200.0.0/16 for the cluster's switch")
    return random.choice(candidates[1:] or candidates)


def _root_routes() -> list[ipaddress.IPv4Network]:
    out = run("ip", "-4", "route", "show", "table", "all").stdout
    found = []
    for line in out.splitlines():
        destination = line.split()[0] if line.split()[0] not in ("local", "broadcast", "unicast") else line.split()[1]
        try:
            found.append(ipaddress.IPv4Network(destination, strict=False))
        except ValueError:  # "default", ...
            continue
    return found


def _free_pod_range() -> ipaddress.IPv4Network:
    """A /20 of 10.244.0.0/16 that no route of the root namespace overlaps (another cluster's pods)."""
    taken = _root_routes()
    candidates = [r for r in POD_SUBNETS.subnets(new_prefix=POD_RANGE_PREFIX) if not any(r.overlaps(t) for t in taken)]
    if not candidates:
        raise NetworkError("no free /20 in 10.244.0.0/16 for the cluster's pods")
    return random.choice(candidates)


@dataclasses.dataclass
class Switch:
    """The nodes' shared L2 segment, plus the root namespace's port on it."""

    tag: str
    subnet: str = ""
    pod_range: str = ""  # the cluster's pod subnets: one /24 per node

    @property
    def netns(self) -> str:
        return f"pdm-{self.tag}-sw"

    @property
    def root_link(self) -> str:
        return f"pdm{self.tag}r"

    @property
    def guard_comment(self) -> str:
        return f"podiam-cluster-{self.tag}: nodes cannot open connections to the root namespace"

    @property
    def root_ip(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[1])

    def node_ip(self, index: int) -> str:
        return str(ipaddress.ip_network(self.subnet)[10 + index])

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def pod_subnet(self, index: int) -> str:
        return str(list(ipaddress.ip_network(self.pod_range).subnets(new_prefix=24))[index])

    def create(self) -> Switch:
        if not self.subnet:
            self.subnet = str(_free_switch_subnet())
        if not self.pod_range:
            self.pod_range = str(_free_pod_range())
        try:
            run("ip", "netns", "add", self.netns)
            in_netns(self.netns, "ip", "link", "add", "br0", "type", "bridge")
            in_netns(self.netns, "ip", "link", "set", "br0", "up")
            run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "root", "netns", self.netns)
            in_netns(self.netns, "ip", "link", "set", "root", "master", "br0", "up")
            run("ip", "addr", "add", f"{self.root_ip}/{self.prefix}", "dev", self.root_link)
            run("ip", "link", "set", self.root_link, "up")
            self._guard("-I")
        except BaseException:
            self.destroy()
            raise
        return self

    def _guard_rules(self) -> list[list[str]]:
        match = ["-i", self.root_link, "-m", "comment", "--comment", self.guard_comment]
        return [[*match, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"], [*match, "-j", "DROP"]]

    def _guard(self, action: str) -> None:
        accept, drop = self._guard_rules()
        if action == "-I":  # the drop first, then the accept above it
            run("iptables", "-w", "5", "-I", "INPUT", "1", *drop)
            run("iptables", "-w", "5", "-I", "INPUT", "1", *accept)
            return
        for rule in (accept, drop):
            while run("iptables", "-w", "5", "-C", "INPUT", *rule, check=False).returncode == 0:
                run("iptables", "-w", "5", "-D", "INPUT", *rule)

    def destroy(self) -> None:
        self._guard("-D")
        run("ip", "link", "del", self.root_link, check=False)
        delete_netns(self.netns)

    def route_pod_subnet(self, subnet: str, node_ip: str) -> None:
        """The root namespace reaches a node's pods through that node (the API server calls webhooks at pod
        addresses). Sending only: the root namespace forwards nothing, and its guard still drops every
        connection the nodes or pods open to it."""
        run("ip", "route", "replace", subnet, "via", node_ip, "dev", self.root_link)

    def unroute_pod_subnet(self, subnet: str) -> None:
        run("ip", "route", "del", subnet, "dev", self.root_link, check=False)

    def attach_node(self, node_netns: str, index: int) -> str:
        """Create the node's namespace with ``eth0`` on the switch; returns the node's IP."""
        ip = self.node_ip(index)
        run("ip", "netns", "add", node_netns)
        port = f"n{index}"
        run("ip", "-n", node_netns, "link", "add", NODE_INTERFACE, "type", "veth", "peer", "name", port, "netns", self.netns)
        in_netns(self.netns, "ip", "link", "set", port, "master", "br0", "up")
        for argv in (
            ("ip", "link", "set", "lo", "up"),
            ("ip", "addr", "add", f"{ip}/{self.prefix}", "dev", NODE_INTERFACE),
            ("ip", "link", "set", NODE_INTERFACE, "up"),
            ("ip", "addr", "add", f"{HOST_SERVICES_ADDRESS}/32", "dev", "lo"),
            ("ip", "addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo"),
            # The node's own requests to it come from the node's address, as on EC2 (not from 169.254.169.254).
            ("ip", "route", "replace", "local", METADATA_ADDRESS, "dev", "lo", "table", "local", "proto", "kernel",
             "scope", "host", "src", ip),
            # Routed nowhere but the switch: without a route, a connect() to the
            # kubernetes Service fails before the nat table's DNAT can apply.
            ("ip", "route", "add", SERVICE_RANGE, "dev", NODE_INTERFACE),
            # EKS Pod Identity's container-credentials address: an EKS node's default
            # route carries it until a DNAT sends host-network callers to the node's
            # agent; these nodes have no default route, so it gets one of its own.
            ("ip", "route", "add", f"{CONTAINER_CREDENTIALS_ADDRESS}/32", "dev", NODE_INTERFACE),
        ):
            in_netns(node_netns, *argv)
        return ip


def route_pod_subnets(node_netns: str, others: Sequence[tuple[str, str]]) -> None:
    """In ``node_netns``, route each other node's pod subnet through that node (``(subnet, node_ip)`` pairs)."""
    for subnet, via in others:
        in_netns(node_netns, "ip", "route", "replace", subnet, "via", via, "dev", NODE_INTERFACE)


def forward_kubernetes_service(node_netns: str, api_port: int) -> None:
    """The kubernetes Service (10.96.0.1:443) DNAT'd to the node's relay to the API server.

    What kube-proxy would do for this one Service: PREROUTING for pods,
    OUTPUT for host-network pods and the node's own processes.
    """
    target = f"{HOST_SERVICES_ADDRESS}:{api_port}"
    rule = ["-d", f"{KUBERNETES_SERVICE_IP}/32", "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", target]
    for chain in ("PREROUTING", "OUTPUT"):
        in_netns(node_netns, "iptables", "-w", "5", "-t", "nat", "-A", chain, *rule)


def forwarding(netns: str | None = None) -> str:
    """``net.ipv4.ip_forward`` of the root namespace (or of ``netns``)."""
    if netns is None:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    return in_netns(netns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()


def default_route(netns: str) -> str:
    """The namespace's default route ('' when it has none, as every node must)."""
    return in_netns(netns, "ip", "-4", "route", "show", "default").stdout.strip()
