"""The local cluster's one certificate helper: a CA that issues certificates
into files, for the Kubernetes control plane and nodes and for podiam's
operator ↔ proxy mutual TLS alike.

ECDSA P-256 for every certificate: key generation takes about a millisecond,
where RSA 2048 takes tens, and every component accepts it. The one RSA key is
the service-account token signing key (2048 bits, as kubeadm and EKS make
it), so the cluster's tokens are signed RS256, as real clusters' are, and
podiam's container-credentials tests check them as the proxy does there.
Files are written then renamed, as the kubelet updates a mounted Secret, so a
reader never sees a half-written one; keys are 0600.

Two file layouts (:class:`Layout`): Kubernetes' (``ca.crt``, ``NAME.crt`` and
``NAME.key``) for the cluster, the guide's cfssl names (``ca.pem``,
``NAME.pem`` and ``NAME-key.pem``) for podiam's PKI, so tests pass paths
exactly as the chart mounts Secrets.

``make_pki(directory)`` returns a :class:`Pki` for podiam's mutual TLS:

- ``ca``: the CA every proxy and the operator trust;
- ``server``: the proxy's server certificate, DNS SAN ``wire.PROXY_SERVER_NAME``;
- ``operator``: the operator's client certificate, CN and DNS SAN ``wire.OPERATOR_IDENTITY``;
- ``operator_cn_only``: the operator identity in the CN only (no SAN), also valid;
- ``foreign``: names the operator identity but is signed by another CA;
- ``expired``: names the operator identity, signed by ``ca``, expired yesterday;
- ``other_identity``: valid and signed by ``ca``, but names someone else.

``Pki.issue(...)`` issues more (e.g. a renewed server certificate for
reload tests); ``Pki.rotate_ca(...)`` starts a new CA in the same files.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from metadata_proxy import wire

# Long enough that nothing here ever expires by itself (a cluster kept with
# `up` included); tests that need an expiry pass not_after.
VALIDITY = datetime.timedelta(days=3650)
_BACKDATE = datetime.timedelta(minutes=5)  # clocks of the processes reading them may lag a little


@dataclasses.dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path

    @property
    def pair(self) -> tuple[str, str]:
        """``(certfile, keyfile)`` as ``ssl.SSLContext.load_cert_chain`` takes them."""
        return str(self.cert), str(self.key)


@dataclasses.dataclass(frozen=True)
class Layout:
    """File names of a CA's certificate and key and of its leaves' (``{}`` is the leaf's name)."""

    ca_cert: str
    ca_key: str
    cert: str
    key: str

    def leaf(self, directory: Path, name: str) -> CertFiles:
        return CertFiles(directory / self.cert.format(name), directory / self.key.format(name))


KUBERNETES = Layout("ca.crt", "ca.key", "{}.crt", "{}.key")
GUIDE = Layout("ca.pem", "ca-key.pem", "{}.pem", "{}-key.pem")  # cfssl's, as the guide's Secrets hold them


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common_name: str | None, organizations: tuple[str, ...] = ()) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    if common_name is not None:
        parts.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(parts)


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class CertificateAuthority:
    """A CA written to ``directory`` (``layout``'s names) that issues leaves there."""

    def __init__(self, directory: Path, common_name: str = "podiam local cluster CA", *, layout: Layout = KUBERNETES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.layout = layout
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = directory / layout.ca_cert
        self.key_path = directory / layout.ca_key
        _write(self.key_path, _key_pem(self.key), 0o600)
        _write(self.cert_path, self.cert_pem())

    @classmethod
    def load(cls, directory: Path, *, layout: Layout = KUBERNETES) -> CertificateAuthority:
        """The CA written to ``directory`` earlier (nodes joining a running cluster get certificates from it)."""
        ca = cls.__new__(cls)
        ca.directory = directory
        ca.layout = layout
        ca.cert_path = directory / layout.ca_cert
        ca.key_path = directory / layout.ca_key
        ca.cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
        key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ca.key = key
        return ca

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        name: str,
        common_name: str | None = None,
        *,
        server_names: tuple[str, ...] = (),
        organizations: tuple[str, ...] = (),
        client: bool = False,
        server: bool | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        directory: Path | None = None,
    ) -> CertFiles:
        """A leaf written to ``layout``'s names for ``name`` (in ``directory``, default the CA's), replacing any.

        ``server_names`` (IPs or DNS names) become the subjectAltName (none: no
        such extension); ``server`` (default: when there are server names) and
        ``client`` choose the extended key usages.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        if server if server is not None else bool(server_names):
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _BACKDATE)
            .not_valid_after(not_after or now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if server_names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_alt_name(n) for n in server_names]), critical=False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        files = self.layout.leaf(directory or self.directory, name)
        _write(files.key, _key_pem(key), 0o600)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        return files


def service_account_keys(directory: Path) -> CertFiles:
    """The token signing key (``sa.key``, RSA 2048: tokens signed RS256) and its public half (``sa.pub``, in ``cert``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = CertFiles(directory / "sa.pub", directory / "sa.key")
    _write(pair.key, _key_pem(key), 0o600)
    _write(pair.cert, key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pair


# podiam's mutual TLS ----------------------------------------------------------


@dataclasses.dataclass
class Pki:
    directory: Path
    authority: CertificateAuthority
    ca: Path
    server: CertFiles
    operator: CertFiles
    operator_cn_only: CertFiles
    foreign: CertFiles
    expired: CertFiles
    other_identity: CertFiles

    def issue(
        self,
        name: str,
        *identities: str,
        common_name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        authority: CertificateAuthority | None = None,
    ) -> CertFiles:
        """Issue (or re-issue, replacing the files of) certificate ``name``: SANs ``identities``,
        good for a server and a client (as the proxy's and the operator's are used)."""
        return (authority or self.authority).issue(
            name, common_name, server_names=identities, client=True, server=True,
            not_before=not_before, not_after=not_after, directory=self.directory,
        )

    def rotate_ca(self) -> CertificateAuthority:
        """A new CA written over ``ca.pem``; re-issue certificates with it afterwards."""
        self.authority = CertificateAuthority(self.directory, "podiam test CA (rotated)", layout=GUIDE)
        return self.authority


def make_pki(directory: Path) -> Pki:
    authority = CertificateAuthority(directory, "podiam test CA", layout=GUIDE)
    other = CertificateAuthority(directory / "foreign-ca", "a foreign CA", layout=GUIDE)
    now = datetime.datetime.now(datetime.timezone.utc)
    ident = wire.OPERATOR_IDENTITY
    pki = Pki(directory, authority, authority.cert_path, *(CertFiles(directory, directory),) * 6)
    pki.server = pki.issue("server", wire.PROXY_SERVER_NAME, common_name=wire.PROXY_SERVER_NAME)
    pki.operator = pki.issue("operator", ident, common_name=ident)
    pki.operator_cn_only = pki.issue("operator-cn-only", common_name=ident)
    pki.foreign = pki.issue("foreign", ident, common_name=ident, authority=other)
    pki.expired = pki.issue("expired", ident, common_name=ident,
                            not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1))
    pki.other_identity = pki.issue("other-identity", "someone-else", common_name="someone-else")
    return pki
