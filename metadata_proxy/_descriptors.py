"""The process's descriptor limit, and each listener's share of it.

Every connection costs a descriptor, and a process without one to spare
accepts nothing: not a pod's request, not the operator's push, not the
kubelet's probe. So the proxy sets its soft limit (RLIMIT_NOFILE) itself at
start (a pod spec cannot; containers get the runtime's, often a soft 1,024),
up to the hard limit the runtime allows, and splits it: fixed shares for the
control and health ports and for the process's own descriptors, the rest to
the pods' ports, a quarter of it to the container-credentials port when it
is on and the metadata port the remainder. Together they stay below the
limit, so a flood on one port never takes a descriptor another needs.
"""

from __future__ import annotations

import resource

from metadata_proxy import _guard, _pod_ips, _settings, _upstream

# The operator's pushes: one connection per replica and node at a time (two at most), and anyone
# else's attempts, cut off before their handshake ends.
CONTROL_PER_SOURCE, CONTROL_TOTAL = 8, 128
# The kubelet's probes (one connection each) and Prometheus' scrapes.
HEALTH_PER_SOURCE, HEALTH_TOTAL = 8, 64
# The process's own: standard streams, the event loop, three listeners, signal pipes, TLS and route
# files being read, iptables' pipes; and its connections to the node's metadata service and to the pod-IP reader.
OWN = 64
RESERVED = CONTROL_TOTAL + HEALTH_TOTAL + OWN + _upstream.CONNECTIONS + _pod_ips.CONNECTIONS
MIN_METADATA = 64


def set_limit(wanted: int) -> int:
    """Set the soft limit to ``wanted``, or to the hard limit if that is lower; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if limit != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return limit


def shares(limit: int, settings: _settings.ProxySettings) -> dict[str, _guard.Caps]:
    """Each port's caps under a descriptor limit of ``limit``; ValueError if it cannot hold them."""
    left = limit - RESERVED
    if left < MIN_METADATA:
        raise ValueError(f"a descriptor limit of {limit} leaves the metadata port {left} connections (at least "
                         f"{MIN_METADATA} needed, {RESERVED} go to the other ports and the process): raise --open-files or the "
                         "container runtime's hard limit (LimitNOFILE of containerd's unit)")
    caps = {
        "control": _guard.Caps(CONTROL_PER_SOURCE, CONTROL_TOTAL, settings.read_timeout),
        "health": _guard.Caps(HEALTH_PER_SOURCE, HEALTH_TOTAL, settings.read_timeout),
    }
    if settings.container_credentials:
        caps["credentials"] = _guard.Caps(settings.max_connections_per_source, left // 4, settings.read_timeout)
        left -= left // 4
    total = settings.max_connections or left
    if total > left:
        raise ValueError(f"--max-connections {total} is more than a descriptor limit of {limit} leaves ({left})")
    return {"metadata": _guard.Caps(settings.max_connections_per_source, total, settings.read_timeout), **caps}
