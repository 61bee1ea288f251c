"""The DNAT rules that send pods' 169.254.169.254:80 and 169.254.170.23:80 to this node's proxy.

Layout (nat table)::

    PREROUTING   -p tcp -d 169.254.169.254/32 --dport 80 -j PODIAM-PROXY
    PODIAM-PROXY <-i pattern> -p tcp -d 169.254.169.254/32 --dport 80 -j DNAT --to-destination HOST_IP:PORT

    PREROUTING   -p tcp -d 169.254.170.23/32 --dport 80 -j PODIAM-CONTAINER-CREDS
    OUTPUT       -p tcp -d 169.254.170.23/32 --dport 80 -j PODIAM-CONTAINER-CREDS
    PODIAM-CONTAINER-CREDS -p tcp -d 169.254.170.23/32 --dport 80 -j DNAT --to-destination HOST_IP:CC_PORT

and, where the node has a global IPv6 address, the same for
``fd00:ec2::23`` in ip6tables' nat table (DNAT to that address).

The container-credentials rules match no interface: the caller proves who it
is with its token, not its address, so pods behind any CNI and host-network
processes (locally originated: nat OUTPUT) all reach the proxy. Their chain is
separate, so the metadata chain keeps its one rule whatever is enabled.

``install`` is idempotent and never opens a gap: the wanted rules go in
first, stale or duplicate ones come out after, and the jumps are added last.
Nothing is removed when the proxy exits (Kiam removed its rule at exit, so
pods reached the node's own credentials while it restarted); ``remove`` is
the explicit uninstall (``podiam-proxy --remove-iptables-rules``).
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

CHAIN = "PODIAM-PROXY"
METADATA = "169.254.169.254/32"
COMMENT = "podiam-proxy: pods metadata requests to this node proxy"  # no quotes: -S output must parse back
_MATCH = ["-p", "tcp", "-d", METADATA, "--dport", "80"]

CC_CHAIN = "PODIAM-CONTAINER-CREDS"
CONTAINER_CREDENTIALS = "169.254.170.23/32"  # EKS Pod Identity's address
CONTAINER_CREDENTIALS_V6 = "fd00:ec2::23/128"
CC_COMMENT = "podiam-proxy: container credentials requests to this node proxy"
_CC_HOOKS = ("PREROUTING", "OUTPUT")  # pods, and host-network callers (locally originated)

# /proc/net/if_inet6 flags that make an address unusable as a DNAT target: DAD failed, deprecated, tentative.
_UNUSABLE_V6 = 0x08 | 0x20 | 0x40


class IptablesError(RuntimeError):
    pass


def _iptables(*args: str, check: bool = True, binary: str = "iptables") -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock instead of failing when kube-proxy holds it.
    argv = [binary, "-w", "10", "-t", "nat", *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise IptablesError(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _exists(chain: str, rule: Sequence[str], binary: str = "iptables") -> bool:
    return _iptables("-C", chain, *rule, check=False, binary=binary).returncode == 0


def _chain_exists(chain: str = CHAIN, binary: str = "iptables") -> bool:
    return _iptables("-S", chain, check=False, binary=binary).returncode == 0


def _rules(chain: str, binary: str = "iptables") -> list[list[str]]:
    """The ``-A`` rules of ``chain`` as argv lists (``iptables -S`` form, chain name dropped)."""
    lines = _iptables("-S", chain, binary=binary).stdout.splitlines()
    return [shlex.split(line)[2:] for line in lines if line.startswith(f"-A {chain} ")]


def _jumps(hook: str = "PREROUTING", chain: str = CHAIN, binary: str = "iptables") -> list[list[str]]:
    return [rule for rule in _rules(hook, binary) if rule[-2:] == ["-j", chain]]


def interface_match(pattern: str) -> list[str]:
    return ["!", "-i", pattern[1:]] if pattern.startswith("!") else ["-i", pattern]


def jump_rule() -> list[str]:
    return [*_MATCH, "-m", "comment", "--comment", COMMENT, "-j", CHAIN]


def dnat_rule(interface: str, host_ip: str, port: int) -> list[str]:
    return [*interface_match(interface), *_MATCH, "-m", "comment", "--comment", COMMENT,
            "-j", "DNAT", "--to-destination", f"{host_ip}:{port}"]


def cc_match(destination: str = CONTAINER_CREDENTIALS) -> list[str]:
    return ["-p", "tcp", "-d", destination, "--dport", "80"]


def cc_jump_rule(destination: str = CONTAINER_CREDENTIALS) -> list[str]:
    return [*cc_match(destination), "-m", "comment", "--comment", CC_COMMENT, "-j", CC_CHAIN]


def cc_dnat_rule(host_ip: str, port: int, destination: str = CONTAINER_CREDENTIALS) -> list[str]:
    target = f"[{host_ip}]:{port}" if ":" in host_ip else f"{host_ip}:{port}"
    return [*cc_match(destination), "-m", "comment", "--comment", CC_COMMENT, "-j", "DNAT", "--to-destination", target]


def _ensure_chain(chain: str, wanted: list[list[str]], binary: str = "iptables") -> None:
    """``chain`` holds exactly ``wanted``, in order: the wanted rules go in on top, then everything after them goes."""
    if not _chain_exists(chain, binary):
        _iptables("-N", chain, binary=binary)
    if all(_exists(chain, rule, binary) for rule in wanted) and len(_rules(chain, binary)) == len(wanted):
        return
    for position, rule in enumerate(wanted, start=1):
        _iptables("-I", chain, str(position), *rule, binary=binary)
    for _ in range(len(_rules(chain, binary)) - len(wanted)):
        _iptables("-D", chain, str(len(wanted) + 1), binary=binary)


def _ensure_jump(hook: str, jump: list[str], chain: str, binary: str = "iptables") -> None:
    """Exactly one jump from ``hook`` to ``chain``: ``jump``, never none in between."""
    if _exists(hook, jump, binary) and len(_jumps(hook, chain, binary)) == 1:
        return
    # Ours on top, then one deletion per other listed jump (duplicates, or an
    # older form): -D removes one rule of that spec, so exactly one jump is
    # left, and never none in between.
    _iptables("-I", hook, "1", *jump, binary=binary)
    for rule in _jumps(hook, chain, binary)[1:]:
        _iptables("-D", hook, *rule, binary=binary)


def install(interface: str, host_ip: str, port: int) -> None:
    _ensure_chain(CHAIN, [dnat_rule(interface, host_ip, port)])
    _ensure_jump("PREROUTING", jump_rule(), CHAIN)
    logger.info(
        "iptables rule in place",
        extra={"chain": CHAIN, "interface": interface, "to": f"{host_ip}:{port}"},
    )


def install_container_credentials(host_ip: str, port: int, host_ipv6: str | None = None) -> bool:
    """169.254.170.23:80 from pods and the host network to ``host_ip:port``; and [fd00:ec2::23]:80 to
    ``host_ipv6`` when given. Returns whether the IPv6 rules are in place (a node without ip6tables' nat
    table keeps the IPv4 path: said in the log, not fatal)."""
    _install_cc("iptables", CONTAINER_CREDENTIALS, host_ip, port)
    if host_ipv6 is None:
        return False
    try:
        _install_cc("ip6tables", CONTAINER_CREDENTIALS_V6, host_ipv6, port)
    except (IptablesError, OSError) as error:
        logger.error("no IPv6 container-credentials rule: pods asking [fd00:ec2::23] are not answered",
                     extra={"error": str(error)})
        return False
    return True


def _install_cc(binary: str, destination: str, address: str, port: int) -> None:
    _ensure_chain(CC_CHAIN, [cc_dnat_rule(address, port, destination)], binary)
    for hook in _CC_HOOKS:
        _ensure_jump(hook, cc_jump_rule(destination), CC_CHAIN, binary)
    logger.info("iptables rules in place", extra={"chain": CC_CHAIN, "binary": binary, "from": destination, "to": f"{address}:{port}"})


def node_ipv6(if_inet6: Path = Path("/proc/net/if_inet6")) -> str | None:
    """This node's first usable global IPv6 address (the DNAT target for fd00:ec2::23), None when it has none."""
    try:
        lines = if_inet6.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[3] != "00" or int(fields[4], 16) & _UNUSABLE_V6 or fields[5] == "lo":
            continue
        return str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    return None


def _remove_chain(chain: str, hooks: Sequence[str], binary: str) -> int:
    removed = 0
    for hook in hooks:
        for rule in _jumps(hook, chain, binary):
            _iptables("-D", hook, *rule, binary=binary)
            removed += 1
    if _chain_exists(chain, binary):
        removed += len(_rules(chain, binary))
        _iptables("-F", chain, binary=binary)
        _iptables("-X", chain, binary=binary)
    return removed


def remove() -> int:
    """Remove the jumps and the chains (ip6tables' too); returns how many rules were removed. Idempotent."""
    removed = _remove_chain(CHAIN, ["PREROUTING"], "iptables") + _remove_chain(CC_CHAIN, _CC_HOOKS, "iptables")
    if shutil.which("ip6tables") is not None:
        try:
            removed += _remove_chain(CC_CHAIN, _CC_HOOKS, "ip6tables")
        except IptablesError as error:  # no nat table for IPv6 here: nothing of ours there either
            logger.info("ip6tables: nothing removed", extra={"error": str(error)})
    logger.info("iptables rules removed", extra={"chains": [CHAIN, CC_CHAIN], "rules": removed})
    return removed


def installed() -> list[list[str]]:
    """The rules of our chains (empty when absent), for status and tests."""
    return [rule for chain in (CHAIN, CC_CHAIN) if _chain_exists(chain) for rule in _rules(chain)]
