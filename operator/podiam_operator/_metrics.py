"""Prometheus metrics of the operator (served on ``--metrics-port`` by ``_health``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

import prometheus_client
from cryptography import x509
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STS_CALLS = prometheus_client.Counter(
    "podiam_sts_calls_total", "STS API calls, by action and result (ok or the error code)", ["action", "result"]
)
STS_LATENCY = prometheus_client.Histogram(
    "podiam_sts_call_seconds", "STS call latency, by action and result", ["action", "result"], buckets=_LATENCY_BUCKETS
)
CACHE_SIZE = prometheus_client.Gauge("podiam_credentials_cached", "Credential sets held in the cache")
CACHE_LOOKUPS = prometheus_client.Counter(
    "podiam_credential_cache_lookups_total", "Credential demands, by result (hit, miss, shared: joined an in-flight call)", ["result"]
)
PUSHES = prometheus_client.Counter("podiam_pushes_total", "Pushes to proxies, by kind (changes, snapshot, status) and result", ["kind", "result"])
PUSH_LATENCY = prometheus_client.Histogram(
    "podiam_push_seconds", "Push latency, by kind and result", ["kind", "result"], buckets=_LATENCY_BUCKETS
)
BINDINGS = prometheus_client.Gauge("podiam_bindings", "PodRoleBindings by phase", ["phase"])
PODS_SERVED = prometheus_client.Gauge("podiam_pod_entries", "Pod entries pushed to proxies (all nodes)")
PROXIES = prometheus_client.Gauge("podiam_proxies", "Proxies known, by state (synced, pending)", ["state"])
STS_WAITING = prometheus_client.Gauge(
    "podiam_sts_calls_waiting", "STS calls waiting for a slot or their namespace's budget, by priority (renewal, new)", ["priority"]
)
STS_BUDGET_WAITS = prometheus_client.Counter(
    "podiam_sts_budget_waits_total", "STS calls that had to wait because every namespace using them had spent its budget"
)

# --- for alerts (charts/podiam/templates/prometheusrule.yaml) and the dashboard -------------------------
ACTIVE = prometheus_client.Gauge(
    "podiam_operator_active", "1 while this replica is the active one (it pushes), 0 while it starts or stands by"
)
# Role ARNs and node names are no label values unless --metrics-name-labels (this port is reachable from the
# pod network): without it, "role" and "node" are empty and Prometheus drops them.
STS_ERRORS = prometheus_client.Counter(
    "podiam_sts_errors_total", "Failed STS calls, by action, error code and role (with --metrics-name-labels)",
    ["action", "code", "role"],
)
NODE_PUSHES = prometheus_client.Summary(
    "podiam_node_push_seconds", "Push requests and their latency by node (with --metrics-name-labels) and result",
    ["node", "result"],
)
_name_labels = False


def configure(*, name_labels: bool, tls_files: dict[str, Path] | None = None) -> None:
    """Once, at start-up: whether roles and nodes are named, and the TLS files whose expiry is exported."""
    global _name_labels
    _name_labels = name_labels
    if tls_files is not None:
        _TLS_EXPIRY.files = dict(tls_files)


class ProxyCounts(Protocol):
    """What the proxies' gauges count of one proxy (``_kits.push.ProxyState``)."""

    @property
    def known(self) -> bool: ...

    @property
    def synced(self) -> bool: ...

    @property
    def entries(self) -> int: ...


def observe_proxies(states: Callable[[], Mapping[str, ProxyCounts]]) -> None:
    """Once, at start-up: the proxies by state, and the pod entries they hold, read from the pushers at each scrape."""
    PROXIES.labels("synced").set_function(lambda: sum(1 for s in states().values() if s.synced))
    PROXIES.labels("pending").set_function(lambda: sum(1 for s in states().values() if s.known and not s.synced))
    PODS_SERVED.set_function(lambda: sum(s.entries for s in states().values()))


def sts_error(action: str, code: str, role_arn: str) -> None:
    STS_ERRORS.labels(action, code, role_arn if _name_labels else "").inc()


def node_push(node: str, result: str, seconds: float) -> None:
    NODE_PUSHES.labels(node if _name_labels else "", result).observe(seconds)


def not_after(path: Path) -> float | None:
    """The latest notAfter of the PEM certificates in ``path`` (a CA bundle is usable while its newest CA is)."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return None
    return max(cert.not_valid_after_utc.timestamp() for cert in certs)


class _TlsExpiry(Collector):
    """notAfter of the operator's client certificate and CA bundle, read from their files at scrape time."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "podiam_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the operator's TLS files (cert: its client certificate; ca: the newest CA of the bundle), as a Unix time",
            labels=["file"],
        )
        for name, path in sorted(self.files.items()):
            value = not_after(path)
            if value is not None:
                family.add_metric([name], value)
        yield family


_TLS_EXPIRY = _TlsExpiry()
prometheus_client.REGISTRY.register(_TLS_EXPIRY)
