"""Prometheus metrics of the operator (served on ``--metrics-port`` by ``_health``)."""

from __future__ import annotations

import prometheus_client

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
