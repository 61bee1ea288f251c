"""Prometheus metrics, in a registry of their own (one per proxy, so tests never collide)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import prometheus_client as prom
from prometheus_client import core as prom_core
from prometheus_client import utils as prom_utils

from metadata_proxy import _interception, _store

# Fine buckets at the low end: a credentials hit takes well under a millisecond,
# a wait for a push up to --credential-wait.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestTally:
    """``podiam_proxy_metadata_requests`` by route and status, and ``podiam_proxy_metadata_handler_seconds`` by route.

    What prometheus-client's Counter and Histogram would expose, but counted
    with a dict and a list (no lock: the metadata port runs on the event loop's
    thread alone), which takes a metadata request's counting from about 2 µs
    to a fraction of one; a collector reads them at scrape time.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = buckets
        self._counts: dict[tuple[str, int], int] = {}
        self._latency: dict[str, list[float]] = {}  # per route: a count per bucket (the last: above them all), then the sum

    def record(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = [0.0] * (len(self._bounds) + 2)
        latency[bisect.bisect_left(self._bounds, seconds)] += 1
        latency[-1] += seconds

    def collect(self) -> Iterator[prom_core.Metric]:
        requests = prom_core.CounterMetricFamily("podiam_proxy_metadata_requests", "Metadata requests by route and HTTP status.",
                                                 labels=["route", "status"])
        for (route, status), count in sorted(self._counts.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        latency = prom_core.HistogramMetricFamily("podiam_proxy_metadata_handler_seconds",
                                                  "Metadata request handling time by route.", labels=["route"])
        for route, tally in sorted(self._latency.items()):
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip((*self._bounds, float("inf")), tally[:-1]):
                cumulative += in_bucket
                buckets.append((prom_utils.floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            latency.add_metric([route], buckets, sum_value=tally[-1])
        yield latency


class Metrics:
    def __init__(self) -> None:
        # *_created series double the exposition for no use here.
        prom.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        # The metadata port's hot path counts with plain ints; read at scrape time (RequestTally).
        self.requests = RequestTally(_LATENCY_BUCKETS)
        r.register(self.requests)
        self.credentials = prom.Counter(
            "podiam_proxy_credential_lookups",
            "Credential lookups: hit (served at once), waited_hit (served after waiting for a push), "
            "miss (nothing to serve after waiting), wrong_role (asked for a role the pod does not have), "
            "node_identity (one of the operator's own pods, answered from the node's metadata service), "
            "learned (a pod the operator announced as starting here, served by the IP the node gave it before its "
            "entry arrived).",
            ["result"], registry=r,
        )
        self.waits = prom.Counter("podiam_proxy_credential_waits", "Requests that waited for a push.", registry=r)
        self.tokens = prom.Counter("podiam_proxy_imdsv2_tokens_issued", "IMDSv2 session tokens issued.", registry=r)
        self.token_failures = prom.Counter(
            "podiam_proxy_imdsv2_token_failures", "Requests refused for a missing, invalid or expired token.", ["reason"],
            registry=r,
        )
        self.upstream = prom.Counter(
            "podiam_proxy_upstream_requests", "Requests the proxy sent to the real metadata service, by status (error: no answer).",
            ["status"], registry=r,
        )
        self.upstream_cache = prom.Counter(
            "podiam_proxy_upstream_cache_lookups",
            "Pod requests for the real metadata service's paths: hit (a cached answer), miss (asked upstream), joined "
            "(waited for the same path's request on its way), stale (the bucket was empty: the last answer), throttled "
            "(the bucket was empty and nothing cached: 429).",
            ["result"], registry=r,
        )
        self.connections = prom.Gauge("podiam_proxy_connections", "Open connections by port.", ["port"], registry=r)
        self.connections_max = prom.Gauge(
            "podiam_proxy_connections_max", "Connections a port may hold open in all (its share of the descriptor limit).",
            ["port"], registry=r,
        )
        self.connections_dropped = prom.Counter(
            "podiam_proxy_connections_dropped",
            "Connections reset by port and reason: source_cap (its source held its cap), total_cap (the port held its "
            "share and none was waiting for a request), evicted (closed, still without a request, to make room), "
            "read_timeout (no complete request head in time), tls_failed (control port: no handshake).",
            ["port", "reason"], registry=r,
        )
        self.log_lines_suppressed = prom.Counter(
            "podiam_proxy_log_lines_suppressed", "Log lines counted into a summary instead of written, by kind.", ["kind"],
            registry=r,
        )
        self.pushes = prom.Counter(
            "podiam_proxy_pushes", "Pushes received on the control port, by kind and outcome.", ["kind", "outcome"],
            registry=r,
        )
        self.push_rejections = prom.Counter(
            "podiam_proxy_push_rejected_items", "Items of pushes refused by the store rules.", ["kind"], registry=r,
        )
        self.refused_clients = prom.Counter(
            "podiam_proxy_control_refused", "Control requests refused before any handler.", ["reason"], registry=r,
        )
        self.pods = prom.Gauge("podiam_proxy_pods", "Pod entries held.", registry=r)
        self.roles = prom.Gauge("podiam_proxy_roles", "Role credentials held.", registry=r)
        self.ready = prom.Gauge("podiam_proxy_ready", "1 once the first full snapshot was applied.", registry=r)
        self.snapshot_generation = prom.Gauge(
            "podiam_proxy_snapshot_generation", "Generation of the last applied snapshot (-1: none yet).", registry=r,
        )
        self.not_intercepted = prom.Gauge(
            "podiam_proxy_pods_not_intercepted",
            "Pushed pods whose route goes through an interface --host-interface does not match (with --iptables).",
            registry=r,
        )
        self.cert_expiry = prom.Gauge(
            "podiam_proxy_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the loaded TLS files, as a Unix time.", ["file"], registry=r,
        )
        self.credentials_expiry = prom.Gauge(
            "podiam_proxy_credentials_expiry_timestamp_seconds",
            "Expiry of the role credentials held that expire first, as a Unix time (+Inf: none held).", registry=r,
        )
        self.operator_contact = prom.Gauge(
            "podiam_proxy_operator_contact_timestamp_seconds",
            "When the operator's last control request (a push or its periodic status check) succeeded, as a Unix time "
            "(0: none yet).", registry=r,
        )
        self.tls_reloads = prom.Counter(
            "podiam_proxy_tls_reloads", "TLS file reloads by outcome.", ["outcome"], registry=r,
        )

    def watch_store(self, store: _store.Store) -> None:
        # Read at scrape time: nothing to keep in step on the hot path.
        self.pods.set_function(lambda: store.pod_count)
        self.roles.set_function(lambda: store.role_count)
        self.ready.set_function(lambda: 1 if store.ready else 0)
        self.credentials_expiry.set_function(lambda: store.earliest_expiry)
        self.snapshot_generation.set_function(
            lambda: -1 if store.snapshot_generation is None else store.snapshot_generation
        )

    def watch_interception(self, checker: _interception.Checker) -> None:
        self.not_intercepted.set_function(lambda: checker.not_intercepted)

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)
