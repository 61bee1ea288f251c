"""Probes and metrics on the health port."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from metadata_proxy import _store, wire
from localcluster.proxy import pod_entry, role_credentials

pytestmark = pytest.mark.unit


async def test_healthz(health: Any) -> None:
    response = await health.get("/healthz")
    assert response.status == 200


async def readyz(client: Any) -> tuple[int, str]:
    response = await client.get("/readyz")
    return response.status, await response.text()


async def test_ready_only_after_the_first_snapshot(health: Any, store: _store.Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "metadata_proxy")
    assert await readyz(health) == (503, "not ready: no snapshot\n")
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1")]))  # changes alone: not ready
    assert await readyz(health) == (503, "not ready: no snapshot\n")
    store.apply_snapshot(wire.Snapshot(generation=4, roles=[role_credentials("k1", "r1")], pods=[pod_entry("10.0.0.1", "k1")]))
    # A status word to whoever asks; the details to the log, once per change.
    assert await readyz(health) == (200, "ready\n")
    assert await readyz(health) == (200, "ready\n")
    said = [(r.getMessage(), getattr(r, "snapshot_generation", None), getattr(r, "pods", None))
            for r in caplog.records if r.getMessage().startswith("readiness")]
    assert said == [("readiness: not ready: no snapshot", None, None), ("readiness: ready", 4, 1)]


async def test_metrics_exposition(health: Any, store: _store.Store) -> None:
    store.apply_snapshot(wire.Snapshot(generation=2, roles=[role_credentials("k1", "r1", secret_access_key="never-in-metrics")],
                                       pods=[pod_entry("10.0.0.1", "k1"), pod_entry("10.0.0.2", "k1")]))
    response = await health.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    for line in ("podiam_proxy_pods 2.0", "podiam_proxy_roles 1.0", "podiam_proxy_ready 1.0", "podiam_proxy_snapshot_generation 2.0"):
        assert line in text
    for name in ("podiam_proxy_metadata_requests_total", "podiam_proxy_metadata_handler_seconds", "podiam_proxy_credential_lookups_total",
                 "podiam_proxy_pushes_total", "podiam_proxy_tls_certificate_expiry_timestamp_seconds"):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    assert "never-in-metrics" not in text


async def test_not_ready_while_pods_are_not_intercepted(aiohttp_client: Any, store: _store.Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "metadata_proxy")
    from metadata_proxy import _health, _interception, _metrics
    from tests.unit.proxy.test_interception import FLANNEL

    metrics = _metrics.Metrics()
    checker = _interception.Checker("veth+", store.pod_ips, interval=1.0, read_routes=lambda: FLANNEL)
    metrics.watch_interception(checker)
    client = await aiohttp_client(_health.make_app(store, metrics, checker))
    store.apply_snapshot(wire.Snapshot(generation=1, roles=[role_credentials("k1", "r1")], pods=[pod_entry("10.244.1.5", "k1")]))
    checker.check()
    checker.check()
    # The pods the rule misses are the log's to tell (the checker's warning and the readiness line), not the network's.
    assert await readyz(client) == (503, "not ready: interception\n")
    detail = next(r for r in caplog.records if r.getMessage() == "readiness: not ready: interception").detail  # type: ignore[attr-defined]
    assert detail.startswith("the iptables rule (--host-interface 'veth+')")
    assert "10.244.1.5 via cni0" in detail and "--host-interface cni0 or '!eth0'" in detail
    assert "podiam_proxy_pods_not_intercepted 1.0" in await (await client.get("/metrics")).text()
    checker.pattern = "cni0"
    checker.check()
    assert (await client.get("/readyz")).status == 200
