"""The proxy's metrics the chart's alerts read: when held credentials expire, when the operator last got through."""

from __future__ import annotations

import math
import time

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from metadata_proxy import _metrics, _store, wire
from localcluster import certs
from localcluster.proxy import pod_entry, role_credentials
from tests.unit.proxy.test_control import call

pytestmark = pytest.mark.unit


def sample(metrics: _metrics.Metrics, name: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for found in family.samples:
            if found.name == name:
                return float(found.value)
    raise AssertionError(f"{name} not exported")


def test_the_first_expiry_of_the_credentials_held(store: _store.Store, metrics: _metrics.Metrics) -> None:
    assert sample(metrics, "podiam_proxy_credentials_expiry_timestamp_seconds") == math.inf
    soon, later = role_credentials("k1", "r1", expires_in=1200), role_credentials("k2", "r2", expires_in=3600)
    first = pod_entry("10.0.0.1", "k1")
    pod_uid = first.uid
    store.apply_snapshot(wire.Snapshot(generation=1, roles=[later, soon], pods=[first, pod_entry("10.0.0.2", "k2")]))
    assert sample(metrics, "podiam_proxy_credentials_expiry_timestamp_seconds") == soon.expiration.timestamp()
    store.apply_changes(wire.Changes(remove_roles=["k1"], remove_pods=[wire.PodRemoval(ip="10.0.0.1", uid=pod_uid)]))
    assert sample(metrics, "podiam_proxy_credentials_expiry_timestamp_seconds") == later.expiration.timestamp()


async def test_the_operators_last_successful_contact(control_server: TestServer, pki: certs.Pki, metrics: _metrics.Metrics) -> None:
    name = "podiam_proxy_operator_contact_timestamp_seconds"
    assert sample(metrics, name) == 0
    # Refused (a certificate that does not name the operator) and invalid requests are no contact.
    assert (await call(control_server, pki, "GET", wire.STATUS_PATH, client=pki.other_identity))[0] == 403
    assert (await call(control_server, pki, "PUT", wire.SNAPSHOT_PATH, b"{"))[0] == 422
    assert sample(metrics, name) == 0
    before = time.time()
    assert (await call(control_server, pki, "GET", wire.STATUS_PATH))[0] == 200  # the periodic status check counts
    assert before <= sample(metrics, name) <= time.time()
