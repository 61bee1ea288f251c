"""Probes and metrics on the health port."""

from __future__ import annotations

from typing import Any

import pytest

from metadata_proxy import _store, wire
from tests.support.proxy import pod_entry, role_credentials

pytestmark = pytest.mark.unit


async def test_healthz(health: Any) -> None:
    response = await health.get("/healthz")
    assert response.status == 200


async def test_ready_only_after_the_first_snapshot(health: Any, store: _store.Store) -> None:
    assert (await health.get("/readyz")).status == 503
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1")]))  # changes alone: not ready
    assert (await health.get("/readyz")).status == 503
    store.apply_snapshot(wire.Snapshot(generation=4))
    response = await health.get("/readyz")
    assert response.status == 200 and "snapshot 4" in await response.text()


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
