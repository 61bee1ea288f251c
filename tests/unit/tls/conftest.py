"""Unit tests of the operator-side TLS: pure PKI, checks, rotation and renewal logic.

Certificates are checked twice over: by podiam's own checks, and by a real
OpenSSL handshake in memory (``handshake``), the same verification the
proxy's and the operator's TLS stacks do.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509

from podiam_operator import _settings
from podiam_operator.tls import pki

UTC = datetime.timezone.utc


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


@pytest.fixture
def settings() -> _settings.OperatorSettings:
    return _settings.OperatorSettings(tls_namespace="podiam-system", tls_ca_overlap=datetime.timedelta(minutes=1))


def make_ca(*, at: datetime.datetime | None = None, lifetime: datetime.timedelta = datetime.timedelta(days=3650),
            key_type: _settings.KeyType = _settings.KeyType.ECDSA_P256) -> pki.KeyPair:
    key = pki.generate_key(key_type)
    return pki.KeyPair((pki.issue_ca(key, now=at or now(), lifetime=lifetime),), key)


def make_leaf(ca: pki.KeyPair, name: str, *, server: bool, at: datetime.datetime | None = None,
              lifetime: datetime.timedelta = datetime.timedelta(days=90),
              key_type: _settings.KeyType = _settings.KeyType.ECDSA_P256) -> pki.KeyPair:
    key = pki.generate_key(key_type)
    cert = pki.issue_leaf(ca, key, common_name=name, dns_names=(name,), server=server, now=at or now(), lifetime=lifetime)
    return pki.KeyPair((cert,), key)


def _context(side: int, pair: pki.KeyPair, bundle: Sequence[x509.Certificate], directory: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(side)
    cert, key = directory / f"{side}.crt", directory / f"{side}.key"
    cert.write_bytes(pair.cert_pem())
    key.write_bytes(pair.key_pem())
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cadata=pki.certs_to_pem(bundle).decode())
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def handshake(
    client: pki.KeyPair,
    client_trusts: Sequence[x509.Certificate],
    server: pki.KeyPair,
    server_trusts: Sequence[x509.Certificate],
    server_name: str = "podiam-proxy",
) -> None:
    """A full mutual-TLS handshake in memory; raises ssl.SSLError as the client (the operator) sees it.

    When the server refuses, its alert is delivered to the client, whose read
    then fails with OpenSSL's "tlsv1 alert ..." error, as a real push would.
    """
    with tempfile.TemporaryDirectory() as directory:
        client_context = _context(ssl.PROTOCOL_TLS_CLIENT, client, client_trusts, Path(directory))
        server_context = _context(ssl.PROTOCOL_TLS_SERVER, server, server_trusts, Path(directory))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client_context.wrap_bio(c_in, c_out, server_hostname=server_name)
    server_end = server_context.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(20):
        if not client_done:
            try:
                client_end.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            try:
                server_end.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as refusal:
                c_in.write(s_out.read())  # the alert
                try:
                    client_end.do_handshake() if not client_done else client_end.read(1)
                except ssl.SSLError as seen:
                    raise seen from refusal
                raise
        c_in.write(s_out.read())
        if client_done and server_done:
            return
    raise AssertionError("handshake did not finish")
