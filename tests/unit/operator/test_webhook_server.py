"""The injection webhook's HTTPS server on loopback: it waits for its certificate, serves kopf's function, and
loads a renewed pair for new connections without closing its listener; a pair that does not load is left out."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from podiam_operator._kits import webhook_server
from podiam_operator import _settings
from podiam_operator.tls import leaves, pki

pytestmark = pytest.mark.unit

UTC = datetime.timezone.utc


def _ca() -> pki.KeyPair:
    key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    return pki.KeyPair((pki.issue_ca(key, now=datetime.datetime.now(UTC), lifetime=datetime.timedelta(days=10)),), key)


def _leaf(ca: pki.KeyPair) -> pki.KeyPair:
    settings = _settings.OperatorSettings(tls_namespace="podiam-system", tls_webhook_service="podiam-webhook", tls_webhook_hosts="127.0.0.1,webhook.local")
    spec = leaves.webhook_spec(settings, "podiam-system")
    key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    cert = pki.issue_leaf(ca, key, common_name=spec.common_name, dns_names=spec.dns_names, server=True,
                          now=datetime.datetime.now(UTC), lifetime=datetime.timedelta(days=1), ip_addresses=spec.ip_addresses)
    return pki.KeyPair((cert,), key)


def _write(folder: Path, pair: pki.KeyPair) -> None:
    (folder / "tls.key").write_bytes(pair.key_pem())
    (folder / "tls.crt").write_bytes(pair.cert_pem())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _fn(request: Any, *, webhook: str | None = None, headers: Any = None, sslpeer: Any = None) -> Any:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": request["request"]["uid"], "allowed": True, "warnings": [f"webhook={webhook}"]}}


async def _call(port: int, ca: pki.KeyPair) -> tuple[int, Any, x509.Certificate]:
    """One new connection: the answer and the certificate the server presented."""
    context = ssl.create_default_context(cadata=pki.certs_to_pem([ca.cert]).decode())
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u-1"}}
        async with session.post(f"https://127.0.0.1:{port}/container-credentials", json=review) as answer:
            body = await answer.json() if answer.status == 200 else await answer.text()
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return answer.status, body, x509.load_der_x509_certificate(peer)


async def test_waits_for_its_certificate_then_serves_and_follows_a_renewal(tmp_path: Path) -> None:
    ca = _ca()
    port = _free_port()
    server = webhook_server.ReloadingWebhookServer(addr="127.0.0.1", port=port, cert_file=tmp_path / "tls.crt",
                                                   key_file=tmp_path / "tls.key", check_interval=0.1)

    async def run() -> None:
        async for _ in server(_fn):
            pass

    task = asyncio.ensure_future(run())
    try:
        await asyncio.sleep(1.5)
        assert not server.listening.is_set()  # no certificate yet: no listener
        first = _leaf(ca)
        _write(tmp_path, first)
        await asyncio.wait_for(server.listening.wait(), 5)
        status, body, seen = await _call(port, ca)
        assert status == 200 and body["response"] == {"uid": "u-1", "allowed": True, "warnings": ["webhook=container-credentials"]}
        assert seen.serial_number == first.cert.serial_number
        assert "127.0.0.1" in pki.ip_addresses(seen)

        # A key that does not match the certificate: the old pair keeps serving.
        _write(tmp_path, pki.KeyPair(first.chain, pki.generate_key(_settings.KeyType.ECDSA_P256)))
        await asyncio.sleep(0.5)
        assert (await _call(port, ca))[2].serial_number == first.cert.serial_number

        renewed = _leaf(ca)
        _write(tmp_path, renewed)

        async def presented() -> int:
            while (serial := (await _call(port, ca))[2].serial_number) != renewed.cert.serial_number:
                await asyncio.sleep(0.1)
            return serial

        assert await asyncio.wait_for(presented(), 5) == renewed.cert.serial_number
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_request_that_is_not_json_is_a_400(tmp_path: Path) -> None:
    ca = _ca()
    _write(tmp_path, _leaf(ca))
    port = _free_port()
    server = webhook_server.ReloadingWebhookServer(addr="127.0.0.1", port=port, cert_file=tmp_path / "tls.crt",
                                                   key_file=tmp_path / "tls.key")
    iterator = server(_fn).__aiter__()
    config = await iterator.__anext__()
    try:
        assert config["url"] == f"https://127.0.0.1:{port}/"
        context = ssl.create_default_context(cadata=pki.certs_to_pem([ca.cert]).decode())
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.post(f"https://127.0.0.1:{port}/container-credentials", data=b"{") as answer:
                assert answer.status == 400
    finally:
        await iterator.aclose()  # type: ignore[attr-defined]
    assert not server.listening.is_set()


def test_port_zero_is_a_server_that_never_listens() -> None:
    assert webhook_server.server("0.0.0.0", 0, Path("c"), Path("k")) is not None
    assert not isinstance(webhook_server.server("0.0.0.0", 0, Path("c"), Path("k")), webhook_server.ReloadingWebhookServer)


def test_the_webhook_certificate_names_the_service_and_the_extra_hosts() -> None:
    settings = _settings.OperatorSettings(tls_namespace="ns", tls_webhook_service="podiam-webhook", tls_webhook_hosts=" 127.0.0.1 , ::1,hook.example")
    spec = leaves.webhook_spec(settings, "ns")
    assert spec.dns_names == ("podiam-webhook.ns.svc", "podiam-webhook.ns.svc.cluster.local", "hook.example")
    assert spec.ip_addresses == ("127.0.0.1", "::1") and spec.server
    ca = _ca()
    pair = _leaf(ca)
    assert json.dumps(pki.ip_addresses(pair.cert)) == '["127.0.0.1"]'


def test_a_long_release_name_still_gets_a_webhook_certificate() -> None:
    """X.509 caps a common name at 64 characters; <service>.<namespace>.svc of a long release passes it (a chart test's
    release did, and the operator's whole TLS set-up failed with it). The full name is in the SANs, which clients check."""
    service, namespace = "rbac-no-create-events-podiam-operator-webhook", "rbac-no-create-events-system"
    spec = leaves.webhook_spec(_settings.OperatorSettings(tls_namespace=namespace, tls_webhook_service=service), namespace)
    assert len(f"{service}.{namespace}.svc") > 64 and spec.common_name == service
    key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    cert = pki.issue_leaf(_ca(), key, common_name=spec.common_name, dns_names=spec.dns_names, server=True,
                          now=datetime.datetime.now(UTC), lifetime=datetime.timedelta(days=1), ip_addresses=spec.ip_addresses)
    assert f"{service}.{namespace}.svc" in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
