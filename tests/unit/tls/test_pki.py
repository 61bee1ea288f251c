"""Issuance: what the CA and the leaves say, and that real TLS accepts them."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from podiam_operator import _settings
from podiam_operator.tls import pki
from tests.unit.tls.conftest import handshake, make_ca, make_leaf, now

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("key_type", [_settings.KeyType.ECDSA_P256, _settings.KeyType.ECDSA_P384, _settings.KeyType.RSA_2048])
def test_issued_pair_passes_a_real_mutual_tls_handshake(key_type: _settings.KeyType) -> None:
    ca = make_ca(key_type=key_type)
    proxy = make_leaf(ca, "podiam-proxy", server=True, key_type=key_type)
    operator = make_leaf(ca, "podiam-operator", server=False, key_type=key_type)
    assert pki.key_type_of(proxy.key) is key_type
    handshake(operator, ca.chain, proxy, ca.chain)


def test_ca_is_a_leaf_only_ca_with_a_unique_name() -> None:
    first, second = make_ca(), make_ca()
    constraints = first.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert first.cert.subject != second.cert.subject
    usage = first.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


def test_leaves_carry_one_usage_and_their_name_as_cn_and_san() -> None:
    ca = make_ca()
    proxy = make_leaf(ca, "podiam-proxy", server=True)
    operator = make_leaf(ca, "podiam-operator", server=False)
    assert list(proxy.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(operator.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.dns_names(proxy.cert) == ["podiam-proxy"] and pki.common_names(proxy.cert) == ["podiam-proxy"]
    assert not proxy.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_leaf_never_outlives_its_ca() -> None:
    ca = make_ca(lifetime=datetime.timedelta(days=10))
    leaf = make_leaf(ca, "podiam-proxy", server=True, lifetime=datetime.timedelta(days=90))
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_leaf_is_backdated_for_clock_skew() -> None:
    at = now()
    leaf = make_leaf(make_ca(), "podiam-proxy", server=True, at=at)
    assert at - datetime.timedelta(minutes=10) < leaf.cert.not_valid_before_utc < at


def test_server_certificate_cannot_authenticate_a_client() -> None:
    ca = make_ca()
    proxy = make_leaf(ca, "podiam-proxy", server=True)
    with pytest.raises(ssl.SSLError, match="alert unsupported certificate"):
        handshake(proxy, ca.chain, proxy, ca.chain)


def test_handshake_verifies_the_proxy_name() -> None:
    ca = make_ca()
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(make_leaf(ca, "podiam-operator", server=False), ca.chain, make_leaf(ca, "other-name", server=True), ca.chain)


@pytest.mark.parametrize("private_format", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL])
def test_keys_load_in_every_format_cfssl_and_cert_manager_write(private_format: serialization.PrivateFormat) -> None:
    for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())):
        pem = key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption())
        loaded = pki.key_from_pem(pem, "tls.key")
        assert loaded.private_numbers() == key.private_numbers()  # type: ignore[union-attr]


def test_certificate_chain_round_trips_in_order() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, "podiam-proxy", server=True)
    assert pki.certs_from_pem(pki.certs_to_pem([leaf.cert, ca.cert]), "x") == (leaf.cert, ca.cert)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "tls.crt is empty"),
    (b"hello", "holds no PEM certificate"),
    (b"-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n", "holds a private key, not a certificate"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "holds a malformed certificate"),
])
def test_bad_certificate_pem_is_named(data: bytes, message: str) -> None:
    with pytest.raises(pki.PemError, match=message):
        pki.certs_from_pem(data, "tls.crt")


def test_bad_key_pem_is_named() -> None:
    ca = make_ca()
    with pytest.raises(pki.PemError, match="holds a certificate, not a private key .are the cert and key file names swapped"):
        pki.key_from_pem(ca.cert_pem(), "server-key.pem")
    encrypted = ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(pki.PemError, match="encrypted private key"):
        pki.key_from_pem(encrypted, "server-key.pem")
    with pytest.raises(pki.PemError, match="server-key.pem is empty"):
        pki.key_from_pem(b"  \n", "server-key.pem")
