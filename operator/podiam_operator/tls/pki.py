"""Making keys and certificates, and moving them in and out of PEM. Pure: no I/O, the clock is a parameter."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podiam_operator import _settings

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey

# Leaves start a little in the past so that a peer whose clock runs behind
# ours does not see a "not yet valid" certificate right after a renewal.
_LEAF_BACKDATE = datetime.timedelta(minutes=5)
_CA_BACKDATE = datetime.timedelta(hours=1)


class PemError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A certificate (with any intermediates after it) and its private key."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKey

    @property
    def cert(self) -> x509.Certificate:
        return self.chain[0]

    def cert_pem(self) -> bytes:
        return certs_to_pem(self.chain)

    def key_pem(self) -> bytes:
        return key_to_pem(self.key)


def generate_key(key_type: _settings.KeyType) -> PrivateKey:
    match key_type:
        case _settings.KeyType.ECDSA_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case _settings.KeyType.ECDSA_P384:
            return ec.generate_private_key(ec.SECP384R1())
        case _settings.KeyType.RSA_2048:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        case _settings.KeyType.RSA_3072:
            return rsa.generate_private_key(public_exponent=65537, key_size=3072)
        case _settings.KeyType.RSA_4096:
            return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise ValueError(f"unknown key type {key_type!r}")


def key_type_of(key: PrivateKey) -> _settings.KeyType | None:
    """The setting that would make this key, or None if no setting would."""
    if isinstance(key, rsa.RSAPrivateKey):
        return {2048: _settings.KeyType.RSA_2048, 3072: _settings.KeyType.RSA_3072, 4096: _settings.KeyType.RSA_4096}.get(key.key_size)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": _settings.KeyType.ECDSA_P256, "secp384r1": _settings.KeyType.ECDSA_P384}.get(key.curve.name)
    return None


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _key_usage(*, ca: bool, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def issue_ca(key: PrivateKey, *, now: datetime.datetime, lifetime: datetime.timedelta, name_prefix: str = "podiam-ca") -> x509.Certificate:
    """A self-signed CA that may sign leaves only (path length 0).

    Every CA gets a name of its own (a random suffix), so that while two CAs
    share the trust bundle during a rotation, neither logs nor chain building
    can mix them up.
    """
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podiam"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{name_prefix}-{secrets.token_hex(4)}"),
    ])
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CA_BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, key_encipherment=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, _hash_for(key))
    )


def issue_leaf(
    ca: KeyPair,
    key: PrivateKey,
    *,
    common_name: str,
    dns_names: Sequence[str],
    server: bool,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    """A leaf for TLS server (``server=True``) or client authentication, never both.

    Its validity ends with its CA's at the latest: a leaf that outlived its
    CA would fail verification anyway.
    """
    not_after = min(now + lifetime, ca.cert.not_valid_after_utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podiam"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _LEAF_BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False, key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if dns_names or ip_addresses:
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, _hash_for(ca.key))


# PEM in and out ------------------------------------------------------------


def certs_to_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def certs_from_pem(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """All certificates in ``data``, in order; ``what`` names the source in errors."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        found = "is empty" if not data.strip() else "holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)"
        if b"PRIVATE KEY-----" in data:
            found = "holds a private key, not a certificate"
        raise PemError(f"{what} {found}")
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError as error:
        raise PemError(f"{what} holds a malformed certificate: {error}") from None


def key_from_pem(data: bytes, what: str) -> PrivateKey:
    """A private key in PKCS#8, PKCS#1 (``RSA PRIVATE KEY``, cfssl's and cert-manager's default) or SEC1 (``EC PRIVATE KEY``)."""
    if b"PRIVATE KEY-----" not in data:
        found = "is empty" if not data.strip() else "holds no PEM private key"
        if b"-----BEGIN CERTIFICATE-----" in data:
            found = "holds a certificate, not a private key (are the cert and key file names swapped?)"
        raise PemError(f"{what} {found}")
    if b"ENCRYPTED" in data:
        raise PemError(f"{what} holds an encrypted private key; podiam needs it unencrypted (as Kubernetes TLS Secrets hold it)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise PemError(f"{what} holds a malformed private key: {error}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise PemError(f"{what} holds a {type(key).__name__}, which TLS cannot use")
    return key


def describe(cert: x509.Certificate) -> str:
    """A short, human name for a certificate in messages: its subject, or its SANs when the subject is empty."""
    subject = cert.subject.rfc4514_string()
    if subject:
        return subject
    names = dns_names(cert)
    return f"(empty subject; DNS {', '.join(names)})" if names else f"(empty subject, serial {cert.serial_number:x})"


def _alternative_names(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])


def dns_names(cert: x509.Certificate) -> list[str]:
    return list(_alternative_names(cert).get_values_for_type(x509.DNSName))


def ip_addresses(cert: x509.Certificate) -> list[str]:
    return [str(ip) for ip in _alternative_names(cert).get_values_for_type(x509.IPAddress)]


def common_names(cert: x509.Certificate) -> list[str]:
    return [str(attribute.value) for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki))


def renewal_point(cert: x509.Certificate, renew_at: float) -> datetime.datetime:
    """When ``renew_at`` (a fraction) of the certificate's validity has passed."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    return not_before + (not_after - not_before) * renew_at


def extended_usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    """None: no extended key usage extension (any usage goes)."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def describe_issuer(cert: x509.Certificate) -> str:
    return cert.issuer.rfc4514_string() or "(empty issuer name)"
