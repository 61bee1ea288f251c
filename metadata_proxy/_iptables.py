"""The DNAT rule that sends pods' 169.254.169.254:80 to this node's proxy.

Layout (nat table)::

    PREROUTING   -p tcp -d 169.254.169.254/32 --dport 80 -j PODIAM-PROXY
    PODIAM-PROXY <-i pattern> -p tcp -d 169.254.169.254/32 --dport 80 -j DNAT --to-destination HOST_IP:PORT

``install`` is idempotent and never opens a gap: the wanted rule goes in
first, stale or duplicate ones come out after, and the jump is added last.
Nothing is removed when the proxy exits (Kiam removed its rule at exit, so
pods reached the node's own credentials while it restarted); ``remove`` is
the explicit uninstall (``podiam-proxy --remove-iptables-rules``).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Sequence

logger = logging.getLogger(__name__)

CHAIN = "PODIAM-PROXY"
METADATA = "169.254.169.254/32"
COMMENT = "podiam-proxy: pods metadata requests to this node proxy"  # no quotes: -S output must parse back
_MATCH = ["-p", "tcp", "-d", METADATA, "--dport", "80"]


class IptablesError(RuntimeError):
    pass


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock instead of failing when kube-proxy holds it.
    argv = ["iptables", "-w", "10", "-t", "nat", *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise IptablesError(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _exists(chain: str, rule: Sequence[str]) -> bool:
    return _iptables("-C", chain, *rule, check=False).returncode == 0


def _chain_exists() -> bool:
    return _iptables("-S", CHAIN, check=False).returncode == 0


def _rules(chain: str) -> list[list[str]]:
    """The ``-A`` rules of ``chain`` as argv lists (``iptables -S`` form, chain name dropped)."""
    lines = _iptables("-S", chain).stdout.splitlines()
    return [shlex.split(line)[2:] for line in lines if line.startswith(f"-A {chain} ")]


def _jumps() -> list[list[str]]:
    return [rule for rule in _rules("PREROUTING") if rule[-2:] == ["-j", CHAIN]]


def interface_match(pattern: str) -> list[str]:
    return ["!", "-i", pattern[1:]] if pattern.startswith("!") else ["-i", pattern]


def jump_rule() -> list[str]:
    return [*_MATCH, "-m", "comment", "--comment", COMMENT, "-j", CHAIN]


def dnat_rule(interface: str, host_ip: str, port: int) -> list[str]:
    return [*interface_match(interface), *_MATCH, "-m", "comment", "--comment", COMMENT,
            "-j", "DNAT", "--to-destination", f"{host_ip}:{port}"]


def install(interface: str, host_ip: str, port: int) -> None:
    if not _chain_exists():
        _iptables("-N", CHAIN)
    wanted = dnat_rule(interface, host_ip, port)
    if not (_exists(CHAIN, wanted) and len(_rules(CHAIN)) == 1):
        # Wanted rule first, then drop everything after it: no gap, no duplicates.
        _iptables("-I", CHAIN, "1", *wanted)
        for _ in range(len(_rules(CHAIN)) - 1):
            _iptables("-D", CHAIN, "2")
    jumps = _jumps()
    if not (_exists("PREROUTING", jump_rule()) and len(jumps) == 1):
        # Ours on top, then one deletion per other listed jump (duplicates, or
        # an older form): -D removes one rule of that spec, so exactly one
        # jump is left, and never none in between.
        _iptables("-I", "PREROUTING", "1", *jump_rule())
        for rule in _jumps()[1:]:
            _iptables("-D", "PREROUTING", *rule)
    logger.info(
        "iptables rule in place",
        extra={"chain": CHAIN, "interface": interface, "to": f"{host_ip}:{port}"},
    )


def remove() -> int:
    """Remove the jump(s) and the chain; returns how many rules were removed. Idempotent."""
    removed = 0
    for rule in _jumps():
        _iptables("-D", "PREROUTING", *rule)
        removed += 1
    if _chain_exists():
        removed += len(_rules(CHAIN))
        _iptables("-F", CHAIN)
        _iptables("-X", CHAIN)
    logger.info("iptables rules removed", extra={"chain": CHAIN, "rules": removed})
    return removed


def installed() -> list[list[str]]:
    """The rules of our chain (empty when absent), for status and tests."""
    return _rules(CHAIN) if _chain_exists() else []
