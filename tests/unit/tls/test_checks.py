"""Every problem a user can make with TLS material gets its own, actionable message."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podiam_operator import _settings
from podiam_operator.tls import checks, pki
from tests.unit.tls.conftest import make_ca, make_leaf, now

pytestmark = pytest.mark.unit

SOURCES = checks.Sources(cert="/etc/podiam/tls/server.pem", key="/etc/podiam/tls/server-key.pem", ca="/etc/podiam/tls/ca.pem")


def _check(pair: pki.KeyPair, bundle: tuple[x509.Certificate, ...], *, server: bool = False, name: str = "podiam-operator",
           at: datetime.datetime | None = None) -> x509.Certificate:
    return checks.check_material(pair, bundle, SOURCES, server=server, name=name, now=at or now())


def _problem(pair: pki.KeyPair, bundle: tuple[x509.Certificate, ...], **kwargs: object) -> checks.TlsProblem:
    with pytest.raises(checks.TlsProblem) as caught:
        _check(pair, bundle, **kwargs)  # type: ignore[arg-type]
    return caught.value


def _cert(ca: pki.KeyPair, *, cn: str | None, dns: list[str] | None, usages: list[x509.ObjectIdentifier] | None) -> pki.KeyPair:
    """A leaf as other tools write them (cfssl: no CN, or no SAN; both usages)."""
    key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    at = now()
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "uSwitch")]))
               .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(at - datetime.timedelta(minutes=1)).not_valid_after(at + datetime.timedelta(days=365)))
    if dns is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return pki.KeyPair((builder.sign(ca.key, hashes.SHA256()),), key)


def test_good_material_returns_its_ca() -> None:
    ca = make_ca()
    assert _check(make_leaf(ca, "podiam-operator", server=False), ca.chain) == ca.cert


def test_key_that_does_not_match_its_certificate() -> None:
    ca = make_ca()
    one, other = make_leaf(ca, "podiam-operator", server=False), make_leaf(ca, "podiam-operator", server=False)
    problem = _problem(pki.KeyPair(one.chain, other.key), ca.chain)
    assert problem.reason == checks.KEY_MISMATCH
    assert "the private key in /etc/podiam/tls/server-key.pem does not belong to the certificate CN=podiam-operator" in problem.message


def test_expired_certificate() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, "podiam-operator", server=False, at=now() - datetime.timedelta(days=100), lifetime=datetime.timedelta(days=90))
    problem = _problem(leaf, ca.chain)
    assert problem.reason == checks.EXPIRED
    assert "in /etc/podiam/tls/server.pem expired at" in problem.message and "days ago" in problem.message


def test_not_yet_valid_certificate() -> None:
    ca = make_ca(at=now() - datetime.timedelta(days=1))
    leaf = make_leaf(ca, "podiam-operator", server=False, at=now() + datetime.timedelta(hours=3))
    problem = _problem(leaf, ca.chain)
    assert problem.reason == checks.NOT_YET_VALID
    assert "is not valid before" in problem.message and "check the clock" in problem.message


def test_certificate_from_another_ca() -> None:
    ours, theirs = make_ca(), make_ca()
    problem = _problem(make_leaf(theirs, "podiam-operator", server=False), ours.chain)
    assert problem.reason == checks.UNKNOWN_CA
    assert f"was issued by {theirs.cert.subject.rfc4514_string()}" in problem.message
    assert f"not a CA in /etc/podiam/tls/ca.pem (that holds: {ours.cert.subject.rfc4514_string()})" in problem.message


def test_same_name_but_other_key_is_another_ca() -> None:
    ours = make_ca()
    impostor_key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    impostor = pki.KeyPair((ours.cert,), impostor_key)  # signs with another key under our CA's name
    leaf = make_leaf(impostor, "podiam-operator", server=False)
    assert _problem(leaf, ours.chain).reason == checks.UNKNOWN_CA


def test_expired_ca() -> None:
    ca = make_ca(at=now() - datetime.timedelta(days=20), lifetime=datetime.timedelta(days=10))
    leaf = make_leaf(ca, "podiam-operator", server=False, at=now() - datetime.timedelta(days=15))
    problem = _problem(leaf, ca.chain)
    assert problem.reason == checks.EXPIRED


def test_leaf_in_the_ca_file() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, "podiam-operator", server=False)
    problem = _problem(leaf, leaf.chain)
    assert problem.reason == checks.NOT_A_CA and "not a CA certificate" in problem.message


def test_chain_through_an_intermediate_in_the_certificate_file() -> None:
    root = make_ca()
    intermediate_key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    at = now()
    intermediate_cert = (x509.CertificateBuilder()
                         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
                         .issuer_name(root.cert.subject).public_key(intermediate_key.public_key())
                         .serial_number(x509.random_serial_number())
                         .not_valid_before(at - datetime.timedelta(hours=1)).not_valid_after(at + datetime.timedelta(days=30))
                         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                         .sign(root.key, hashes.SHA256()))
    intermediate = pki.KeyPair((intermediate_cert,), intermediate_key)
    leaf = make_leaf(intermediate, "podiam-operator", server=False)
    with_chain = pki.KeyPair((leaf.cert, intermediate_cert), leaf.key)  # cert-manager's tls.crt
    assert _check(with_chain, root.chain) == root.cert
    assert _problem(leaf, root.chain).reason == checks.UNKNOWN_CA


def test_server_certificate_used_as_the_operators_client_certificate() -> None:
    ca = make_ca()
    problem = _problem(make_leaf(ca, "podiam-operator", server=True), ca.chain)
    assert problem.reason == checks.WRONG_USAGE
    assert "may not be used for TLS client authentication (its extended key usages: serverAuth)" in problem.message


def test_cfssl_default_profile_with_both_usages_is_accepted_both_ways() -> None:
    ca = make_ca()
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _check(_cert(ca, cn=None, dns=["kiam-server", "localhost"], usages=both), ca.chain, name="kiam-server") == ca.cert
    assert _check(_cert(ca, cn="Kiam Agent", dns=["podiam-proxy"], usages=both), ca.chain, server=True, name="podiam-proxy") == ca.cert


def test_operator_identity_missing() -> None:
    ca = make_ca()
    guide_server = _cert(ca, cn=None, dns=["kiam-server", "localhost"], usages=None)
    problem = _problem(guide_server, ca.chain, name="podiam-operator")
    assert problem.reason == checks.WRONG_NAME
    assert "does not carry the identity 'podiam-operator' (as CN or DNS name; it carries 'kiam-server', 'localhost')" in problem.message
    assert "PODIAM_TLS_OPERATOR_IDENTITY" in problem.message and "--operator-identity" in problem.message


def test_identity_by_common_name() -> None:
    ca = make_ca()
    assert _check(_cert(ca, cn="Kiam Server", dns=None, usages=None), ca.chain, name="Kiam Server") == ca.cert


def test_guides_agent_certificate_has_no_name_for_the_operator_to_verify() -> None:
    ca = make_ca()
    guide_agent = _cert(ca, cn="Kiam Agent", dns=None, usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    problem = _problem(guide_agent, ca.chain, server=True, name="podiam-proxy")
    assert problem.reason == checks.WRONG_NAME
    assert "does not carry the DNS name 'podiam-proxy'" in problem.message
    assert "it carries no DNS names at all" in problem.message
    assert 'the "hosts" list of agent.json' in problem.message and "PODIAM_PROXY_SERVER_NAME" in problem.message


def test_server_name_ignores_the_common_name_as_tls_does() -> None:
    ca = make_ca()
    problem = _problem(_cert(ca, cn="podiam-proxy", dns=["other"], usages=None), ca.chain, server=True, name="podiam-proxy")
    assert "its DNS names: other" in problem.message


def test_wildcard_server_name() -> None:
    ca = make_ca()
    pair = _cert(ca, cn=None, dns=["*.proxies.example"], usages=None)
    assert _check(pair, ca.chain, server=True, name="node.proxies.example") == ca.cert
    assert _problem(pair, ca.chain, server=True, name="a.b.proxies.example").reason == checks.WRONG_NAME


def test_empty_bundle() -> None:
    ca = make_ca()
    assert _problem(make_leaf(ca, "podiam-operator", server=False), ()).reason == checks.MISSING


def test_expiry_warning_after_the_renewal_point() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, "podiam-operator", server=False, at=now() - datetime.timedelta(days=70), lifetime=datetime.timedelta(days=90))
    warning = checks.expiry_warning(leaf.cert, "tls.crt", now(), 2 / 3)
    assert warning is not None and "expires at" in warning and "reloads it without a restart" in warning
    assert checks.expiry_warning(make_leaf(ca, "x", server=False).cert, "tls.crt", now(), 2 / 3) is None
