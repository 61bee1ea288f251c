"""Which pod the node gave an IP to, from the CNI result cache of the node's container runtime.

Every runtime that calls CNI plugins through libcni (containerd, CRI-O),
whatever the plugin (bridge, flannel, Calico, Cilium, the AWS VPC CNI),
writes each pod network set-up's result to ``/var/lib/cni/results/`` before
the pod's containers start: the IPs it got, and the pod's uid, namespace and
name (the CNI args ``K8S_POD_*``). It is the record the kubelet later reports
to the API server as the pod's IP, readable here a second or more earlier.

The folder is root's alone (0700): ``podiam-proxy --serve-pod-ips`` reads it
in a container of its own (``_pod_ips``), so that the process serving the
pods' requests gets no extra privilege.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A cache file holds one network's result for one container: a few KB. Anything much larger is not one.
MAX_FILE = 256 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """One cached CNI result naming an IP: the pod it was set up for, and when it was written."""

    ip: str
    uid: str
    namespace: str
    name: str
    network: str
    written: float  # the file's mtime: a later set-up that reuses the IP writes a newer one


def _ips(result: dict[str, Any]) -> list[str]:
    """The addresses of a CNI result, any spec version (0.3+: ``ips``; 0.1/0.2: ``ip4``/``ip6``)."""
    raw = [entry.get("address") for entry in result.get("ips") or [] if isinstance(entry, dict)]
    raw += [result.get(family, {}).get("ip") for family in ("ip4", "ip6") if isinstance(result.get(family), dict)]
    addresses = []
    for value in raw:
        if not isinstance(value, str):
            continue
        try:
            address = ipaddress.ip_interface(value).ip
        except ValueError:
            continue
        # Never a pod's own: every pod's loopback network records 127.0.0.1, and a node-local
        # caller may come from it (or from a link-local address) while that pod is starting.
        if not (address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast):
            addresses.append(str(address))
    return addresses


def parse(text: str, written: float, networks: re.Pattern[str]) -> list[Claim]:
    """The claims of one cache file: nothing for another network, a loopback set-up, or a file without the pod's uid."""
    try:
        cached = json.loads(text)
    except ValueError:
        return []
    if not isinstance(cached, dict) or not isinstance(cached.get("result"), dict):
        return []
    network = cached.get("networkName")
    if not isinstance(network, str) or not networks.fullmatch(network):
        return []
    args = {pair[0]: pair[1] for pair in cached.get("cniArgs") or [] if isinstance(pair, list) and len(pair) == 2}
    uid, namespace, name = (args.get(key) for key in ("K8S_POD_UID", "K8S_POD_NAMESPACE", "K8S_POD_NAME"))
    if not (isinstance(uid, str) and isinstance(namespace, str) and isinstance(name, str) and uid):
        return []
    return [Claim(ip, uid, namespace, name, network, written) for ip in _ips(cached["result"])]


class Results:
    """The cache folder, read on demand; a file is parsed again only when its size or mtime changed."""

    def __init__(self, directory: Path, networks: str) -> None:
        self.directory = directory
        self.networks = re.compile(networks)
        self._parsed: dict[str, tuple[tuple[int, int], list[Claim]]] = {}

    def claims(self, ip: str) -> list[Claim]:
        """Every cached result naming ``ip``, oldest first."""
        found: list[Claim] = []
        seen: dict[str, tuple[tuple[int, int], list[Claim]]] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:  # no pod network set up on this node yet
            entries = []
        for entry in entries:
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile (the pod's network was torn down)
                continue
            if not entry.is_file(follow_symlinks=False) or stat.st_size > MAX_FILE:
                continue
            version = (stat.st_mtime_ns, stat.st_size)
            cached = self._parsed.get(entry.name)
            if cached is None or cached[0] != version:
                try:
                    text = Path(entry.path).read_text(errors="replace")
                except OSError:
                    continue
                cached = (version, parse(text, stat.st_mtime_ns / 1e9, self.networks))
            seen[entry.name] = cached
            found += [claim for claim in cached[1] if claim.ip == ip]
        self._parsed = seen  # forget removed files
        return sorted(found, key=lambda claim: claim.written)
