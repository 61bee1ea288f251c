"""Unauthenticated pushes to a real proxy process: every one refused, nothing it carried ever served.

tests/integration/tls/test_auto.py covers no certificate, another CA and an
expired certificate against the auto-mode PKI; tests/unit/proxy/test_control.py
covers a certificate naming someone else on the aiohttp test server. Here all
of them, plus a proxy's own server certificate replayed as a client (a node's
stolen key must not let it push to other nodes) and plain HTTP, go to the real
``python -m metadata_proxy`` process, each carrying a snapshot that would hand
an attacker's IP credentials; the proxy's state and answers must not change.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_proxy import wire
from localcluster import certs
from localcluster.proxy import ProxyProcess, pod_entry, role_credentials

pytestmark = pytest.mark.fault

CREDS = "/latest/meta-data/iam/security-credentials/"
POD_IP, ATTACKER_IP = "127.0.3.1", "127.0.3.2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.make_pki(tmp_path_factory.mktemp("push-auth-pki"))


@pytest.fixture(scope="module")
def proxy(pki: certs.Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    running = ProxyProcess(tmp_path_factory.mktemp("push-auth"), pki, "127.0.0.40", args=["--credential-wait", "0"]).start()
    try:
        yield running
    finally:
        running.stop()


def _attempt(proxy: ProxyProcess, pki: certs.Pki, client: certs.CertFiles | None, body: bytes) -> str:
    """Push ``body`` as a snapshot with ``client``; 'refused at handshake', 'HTTP <status>', or 'accepted'."""
    try:
        result = proxy.control("PUT", wire.SNAPSHOT_PATH, body, client=client if client is not None else False)
    except (ssl.SSLError, ConnectionError, OSError) as error:
        return f"refused at handshake ({type(error).__name__})"
    return "accepted" if result.status == 200 else f"HTTP {result.status}"


def test_every_unauthenticated_push_is_refused_and_changes_nothing(proxy: ProxyProcess, pki: certs.Pki, tmp_path: Path) -> None:
    legit = role_credentials("legit", "LegitRole")
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=[legit], pods=[pod_entry(POD_IP, "legit")]))
    assert proxy.imds_get(CREDS, source_ip=POD_IP).text == "LegitRole"
    evil = role_credentials("evil", "EvilRole")
    hostile = wire.encode(wire.Snapshot(generation=99, roles=[evil], pods=[pod_entry(ATTACKER_IP, "evil")]))
    # A proxy's own server certificate, replayed as a client: valid, our CA, but not the operator.
    server_as_client = certs.CertFiles(pki.server.cert, pki.server.key)
    # A client certificate of our CA naming the proxy's server name, to try the identity check's other side.
    proxy_named = pki.issue("proxy-named-client", wire.PROXY_SERVER_NAME, common_name=wire.PROXY_SERVER_NAME)
    outcomes = {
        "no certificate": _attempt(proxy, pki, None, hostile),
        "another CA": _attempt(proxy, pki, pki.foreign, hostile),
        "expired": _attempt(proxy, pki, pki.expired, hostile),
        "valid, names someone else": _attempt(proxy, pki, pki.other_identity, hostile),
        "a proxy's server certificate": _attempt(proxy, pki, server_as_client, hostile),
        "valid, names the proxy": _attempt(proxy, pki, proxy_named, hostile),
    }
    assert all(outcome != "accepted" for outcome in outcomes.values()), outcomes
    assert outcomes["valid, names someone else"] == "HTTP 403", outcomes
    # Plain HTTP on the control port: no TLS, no answer a client could mistake for success.
    with socket.create_connection((proxy.host, proxy.control_port), timeout=5) as sock:
        sock.sendall(b"PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(hostile)).encode() + b"\r\n\r\n" + hostile)
        sock.settimeout(5)
        try:
            reply = sock.recv(4096)
        except (ConnectionError, TimeoutError):
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 200"), reply[:100]
    # Nothing changed: the legitimate pod is still served, the attacker's IP gets nothing.
    status = proxy.status()
    assert (status.snapshot_generation, status.pods, status.roles) == (1, 1, 1)
    assert proxy.imds_get(CREDS, source_ip=POD_IP).text == "LegitRole"
    assert proxy.imds_get(CREDS, source_ip=ATTACKER_IP).status == 404
    assert proxy.imds_get(CREDS + "EvilRole", source_ip=ATTACKER_IP).status == 404
    metrics = proxy.metrics()
    assert 'reason="wrong_identity"' in metrics
    # Refusals are logged without the secrets they carried.
    log = proxy.log()
    assert evil.secret_access_key.get_secret_value() not in log and evil.session_token.get_secret_value() not in log
    print("\n" + json.dumps(outcomes, indent=1))


def test_status_and_changes_are_refused_too(proxy: ProxyProcess, pki: certs.Pki) -> None:
    for client in (pki.other_identity, certs.CertFiles(pki.server.cert, pki.server.key)):
        for method, path, body in (("GET", wire.STATUS_PATH, None), ("POST", wire.CHANGES_PATH, wire.encode(wire.Changes()))):
            try:
                result = proxy.control(method, path, body, client=client)
            except (ssl.SSLError, ConnectionError, OSError):
                continue
            assert result.status == 403, (method, path, result.status, result.text)
            assert b"node_name" not in result.body


def test_the_operator_identity_still_gets_in(proxy: ProxyProcess, pki: certs.Pki) -> None:
    for client in (pki.operator, pki.operator_cn_only):
        result = proxy.control("GET", wire.STATUS_PATH, client=client)
        assert result.status == 200, result.text
