"""Real OpenSSL handshake failures, each explained in podiam's terms."""

from __future__ import annotations

import datetime
import ssl

import pytest

from podiam_operator.tls import explain
from tests.unit.tls.conftest import handshake, make_ca, make_leaf, now

pytestmark = pytest.mark.unit


def _failure(**overrides: object) -> tuple[str, str]:
    ca, other = make_ca(), make_ca()
    parts: dict[str, object] = {
        "client": make_leaf(ca, "podiam-operator", server=False), "client_trusts": ca.chain,
        "server": make_leaf(ca, "podiam-proxy", server=True), "server_trusts": ca.chain,
    }
    for key, value in overrides.items():
        parts[key] = value(ca, other) if callable(value) else value
    with pytest.raises((ssl.SSLError, OSError)) as caught:
        handshake(**parts)  # type: ignore[arg-type]
    return str(caught.value), explain.explain_handshake_failure(caught.value, "podiam-proxy")


def test_proxy_certificate_without_the_name() -> None:
    _, text = _failure(server=lambda ca, other: make_leaf(ca, "kiam-agent", server=True))
    assert text.startswith("the operator refused the proxy's certificate: it does not carry the DNS name 'podiam-proxy'")


def test_proxy_certificate_from_another_ca() -> None:
    _, text = _failure(server=lambda ca, other: make_leaf(other, "podiam-proxy", server=True))
    assert "was not issued by a CA in the operator's CA file" in text or "self-signed or its CA" in text


def test_proxy_certificate_expired() -> None:
    _, text = _failure(server=lambda ca, other: make_leaf(ca, "podiam-proxy", server=True, at=now() - datetime.timedelta(days=100)))
    assert text.startswith("the operator refused the proxy's certificate: it has expired")


def test_operator_certificate_from_another_ca() -> None:
    _, text = _failure(client=lambda ca, other: make_leaf(other, "podiam-operator", server=False))
    assert text.startswith("the proxy refused the operator's client certificate: its CA is not in the proxies' CA file")


def test_operator_certificate_expired() -> None:
    _, text = _failure(client=lambda ca, other: make_leaf(ca, "podiam-operator", server=False, at=now() - datetime.timedelta(days=100)))
    assert text.startswith("the proxy refused the operator's client certificate: it has expired")


def test_unknown_error_is_passed_through() -> None:
    assert explain.explain_handshake_failure(ConnectionResetError("reset by peer"), "podiam-proxy") == "TLS to the proxy failed: reset by peer"


def test_identity_refusal() -> None:
    text = explain.explain_refusal(403, '{"error": "client certificate must name \'podiam-operator\'"}', "kiam-server")
    assert text is not None and "--operator-identity" in text and "PODIAM_TLS_OPERATOR_IDENTITY" in text
    assert explain.explain_refusal(500, "boom", "x") is None


def test_operator_certificate_with_server_usage_only() -> None:
    _, text = _failure(client=lambda ca, other: make_leaf(ca, "podiam-operator", server=True))
    assert text.startswith("the proxy refused the operator's client certificate: it is not allowed for TLS client authentication")
