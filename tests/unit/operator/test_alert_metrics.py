"""The operator's metrics the chart's alerts and dashboard read: no role or node named unless asked, TLS expiry, active."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
from cryptography import x509

from podiam_operator import _metrics
from localcluster import certs

pytestmark = pytest.mark.unit

ROLE = "arn:aws:iam::123456789012:role/SecretProjectRole"


def value(name: str, **labels: str) -> float | None:
    return prometheus_client.REGISTRY.get_sample_value(name, labels)


@pytest.fixture(autouse=True)
def unconfigured() -> Iterator[None]:
    yield
    _metrics.configure(name_labels=False, tls_files={})


def test_sts_errors_and_node_pushes_name_no_role_or_node_by_default() -> None:
    _metrics.configure(name_labels=False)
    before = value("podiam_sts_errors_total", action="AssumeRole", code="AccessDenied", role="") or 0
    _metrics.sts_error("AssumeRole", "AccessDenied", ROLE)
    _metrics.node_push("node-secret-1", "ClientConnectorError", 0.25)
    assert value("podiam_sts_errors_total", action="AssumeRole", code="AccessDenied", role="") == before + 1
    exposition = prometheus_client.generate_latest().decode()
    assert "SecretProjectRole" not in exposition and "node-secret-1" not in exposition
    assert (value("podiam_node_push_seconds_count", node="", result="ClientConnectorError") or 0) >= 1


def test_with_name_labels_they_are_named() -> None:
    _metrics.configure(name_labels=True)
    _metrics.sts_error("AssumeRole", "AccessDenied", ROLE)
    _metrics.node_push("node-a", "ok", 0.5)
    _metrics.node_push("node-a", "ok", 0.25)
    assert value("podiam_sts_errors_total", action="AssumeRole", code="AccessDenied", role=ROLE) == 1
    assert value("podiam_node_push_seconds_count", node="node-a", result="ok") == 2
    assert value("podiam_node_push_seconds_sum", node="node-a", result="ok") == 0.75


def test_tls_expiry_is_read_from_the_files_at_scrape_time(tmp_path: Path) -> None:
    pki = certs.make_pki(tmp_path / "pki")
    _metrics.configure(name_labels=False, tls_files={"cert": pki.operator.cert, "ca": pki.ca, "missing": tmp_path / "none.pem"})
    cert = x509.load_pem_x509_certificate(pki.operator.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    name = "podiam_tls_certificate_expiry_timestamp_seconds"
    assert value(name, file="cert") == cert.not_valid_after_utc.timestamp()
    assert value(name, file="ca") == ca.not_valid_after_utc.timestamp()
    assert value(name, file="missing") is None  # no file: no sample (absent(), not a made-up time)


def test_a_bundle_is_as_good_as_its_newest_ca(tmp_path: Path) -> None:
    old, new = certs.make_pki(tmp_path / "old"), certs.make_pki(tmp_path / "new")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(old.ca.read_bytes() + new.ca.read_bytes())
    times = [x509.load_pem_x509_certificate(p.ca.read_bytes()).not_valid_after_utc.timestamp() for p in (old, new)]
    assert _metrics.not_after(bundle) == max(times)


def test_active_follows_the_engine() -> None:
    class Engine:
        started = False

    engine = Engine()
    _metrics.ACTIVE.set_function(lambda: 1 if engine.started else 0)
    assert value("podiam_operator_active") == 0
    engine.started = True
    assert value("podiam_operator_active") == 1
