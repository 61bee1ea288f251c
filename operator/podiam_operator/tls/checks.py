"""Checks of TLS material, each failing with a message a user can act on.

The same message goes to the log, to an Event and to ``/readyz``, so it names
the file or Secret key it is about, what is wrong, and what to do. Pure: the
clock is a parameter.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from metadata_proxy import wire
from podiam_operator.tls import pki

_MAX_CHAIN = 5


class TlsProblem(Exception):
    """Something wrong with TLS material; ``reason`` is the Event reason, ``str()`` the message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


# Event reasons, one per kind of problem.
MISSING = "TLSMaterialMissing"
MALFORMED = "TLSMaterialMalformed"
KEY_MISMATCH = "TLSKeyMismatch"
EXPIRED = "TLSCertificateExpired"
NOT_YET_VALID = "TLSCertificateNotYetValid"
UNKNOWN_CA = "TLSUnknownAuthority"
WRONG_USAGE = "TLSWrongKeyUsage"
WRONG_NAME = "TLSWrongName"
NOT_A_CA = "TLSNotACertificateAuthority"


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where the certificate, key and CA bundle came from, as they appear in messages."""

    cert: str
    key: str
    ca: str


def _ago(delta: datetime.timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    if seconds >= 120:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def check_validity(cert: x509.Certificate, what: str, now: datetime.datetime) -> None:
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now >= not_after:
        raise TlsProblem(
            EXPIRED,
            f"certificate {pki.describe(cert)} in {what} expired at {wire.rfc3339(not_after)} ({_ago(now - not_after)} ago); "
            "issue a new one and update the Secret",
        )
    if now < not_before:
        raise TlsProblem(
            NOT_YET_VALID,
            f"certificate {pki.describe(cert)} in {what} is not valid before {wire.rfc3339(not_before)} (in {_ago(not_before - now)}); "
            "check the clock of the machine that issued it and of this node",
        )


def check_key(cert: x509.Certificate, key: pki.PrivateKey, sources: Sources) -> None:
    if not pki.same_public_key(cert, key):
        raise TlsProblem(
            KEY_MISMATCH,
            f"the private key in {sources.key} does not belong to the certificate {pki.describe(cert)} in {sources.cert}; "
            "the two must come from the same issuance (e.g. server.pem with server-key.pem, tls.crt with tls.key)",
        )


def check_usage(cert: x509.Certificate, what: str, *, server: bool) -> None:
    """TLS refuses a client certificate without clientAuth (server: serverAuth) when the extension is present."""
    needed, label = (ExtendedKeyUsageOID.SERVER_AUTH, "server") if server else (ExtendedKeyUsageOID.CLIENT_AUTH, "client")
    usages = pki.extended_usages(cert)
    if usages is not None and needed not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
        present = ", ".join(getattr(oid, "_name", oid.dotted_string) for oid in usages) or "none"
        raise TlsProblem(
            WRONG_USAGE,
            f"certificate {pki.describe(cert)} in {what} may not be used for TLS {label} authentication "
            f"(its extended key usages: {present}); issue it with '{label} auth' usage "
            "(cfssl's default profile gives both server and client auth)",
        )
    try:
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not key_usage.digital_signature:
        raise TlsProblem(
            WRONG_USAGE,
            f"certificate {pki.describe(cert)} in {what} lacks the 'digital signature' key usage that TLS needs",
        )


def check_client_identity(cert: x509.Certificate, identity: str, what: str) -> None:
    """The proxies accept a client whose CN or a DNS SAN is the configured operator identity."""
    names = pki.common_names(cert) + pki.dns_names(cert)
    if identity not in names:
        carried = ", ".join(repr(name) for name in names) or "no CN and no DNS names"
        raise TlsProblem(
            WRONG_NAME,
            f"the operator's certificate {pki.describe(cert)} in {what} does not carry the identity {identity!r} "
            f"(as CN or DNS name; it carries {carried}), so the proxies would refuse its pushes; "
            "set PODIAM_TLS_OPERATOR_IDENTITY and the proxies' --operator-identity (chart: tls.operatorIdentity) "
            "to one of its names, or re-issue it with that name",
        )


def _dns_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, tail = name.partition(".")
        return bool(head) and tail == pattern[2:]
    return pattern == name


def check_server_name(cert: x509.Certificate, server_name: str, what: str) -> None:
    """The operator dials proxies by IP and verifies this DNS name (SANs only: TLS ignores the CN)."""
    names = pki.dns_names(cert)
    if any(_dns_matches(pattern, server_name) for pattern in names):
        return
    carried = f"its DNS names: {', '.join(names)}" if names else "it carries no DNS names at all"
    raise TlsProblem(
        WRONG_NAME,
        f"the proxies' certificate {pki.describe(cert)} in {what} does not carry the DNS name {server_name!r} "
        f"that the operator verifies when it dials a proxy ({carried}); add {server_name!r} to the certificate's "
        "hosts (for cfssl: the \"hosts\" list of agent.json; for cert-manager: spec.dnsNames) and re-issue it, "
        "or set --proxy-server-name (PODIAM_PROXY_SERVER_NAME; chart: tls.proxyServerName) to one of its DNS names",
    )


def check_bundle(bundle: Sequence[x509.Certificate], what: str, now: datetime.datetime) -> None:
    """A trust bundle holds CA certificates, at least one of them currently valid."""
    if not bundle:
        raise TlsProblem(MISSING, f"{what} holds no CA certificate")
    for cert in bundle:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise TlsProblem(
                NOT_A_CA,
                f"{what} holds {pki.describe(cert)}, which is not a CA certificate; the CA file must hold the CA "
                "that issued the certificates (ca.pem / ca.crt), not a leaf",
            )
    valid = [cert for cert in bundle if cert.not_valid_before_utc <= now < cert.not_valid_after_utc]
    if not valid:
        check_validity(bundle[0], what, now)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, crypto_exceptions.InvalidSignature):
        return False
    return True


def check_chain(
    chain: Sequence[x509.Certificate],
    bundle: Sequence[x509.Certificate],
    what: str,
    bundle_what: str,
    now: datetime.datetime,
) -> x509.Certificate:
    """The CA in ``bundle`` that ``chain[0]`` leads to (through the intermediates after it); checks every link's validity."""
    current = chain[0]
    intermediates = list(chain[1:])
    for _ in range(_MAX_CHAIN):
        for ca in bundle:
            if _issued_by(current, ca):
                check_validity(ca, f"{bundle_what} (the CA that issued {pki.describe(current)})", now)
                return ca
        step = next((cert for cert in intermediates if _issued_by(current, cert)), None)
        if step is None:
            break
        check_validity(step, f"{what} (intermediate CA)", now)
        intermediates.remove(step)
        current = step
    trusted = "; ".join(pki.describe(ca) for ca in bundle) or "nothing"
    raise TlsProblem(
        UNKNOWN_CA,
        f"certificate {pki.describe(chain[0])} in {what} was issued by {chain[0].issuer.rfc4514_string() or '(empty name)'}, "
        f"which is not a CA in {bundle_what} (that holds: {trusted}); the certificate comes from another CA: "
        "put the CA that issued it into the CA file, or re-issue it from the CA there",
    )


def check_material(
    pair: pki.KeyPair,
    bundle: Sequence[x509.Certificate],
    sources: Sources,
    *,
    server: bool,
    name: str,
    now: datetime.datetime,
) -> x509.Certificate:
    """Everything a peer will check in the handshake, plus the key: returns the CA the certificate chains to.

    ``server``: the proxies' certificate (``name`` is the DNS name the operator
    verifies); else the operator's client certificate (``name`` is the identity
    the proxies require).
    """
    cert = pair.cert
    check_key(cert, pair.key, sources)
    check_validity(cert, sources.cert, now)
    check_usage(cert, sources.cert, server=server)
    if server:
        check_server_name(cert, name, sources.cert)
    else:
        check_client_identity(cert, name, sources.cert)
    check_bundle(bundle, sources.ca, now)
    return check_chain(pair.chain, bundle, sources.cert, sources.ca, now)


def expiry_warning(cert: x509.Certificate, what: str, now: datetime.datetime, renew_at: float) -> str | None:
    """A warning once a user-supplied certificate is past the point where it should have been renewed."""
    not_after = cert.not_valid_after_utc
    if now < pki.renewal_point(cert, renew_at):
        return None
    return (
        f"certificate {pki.describe(cert)} in {what} expires at {wire.rfc3339(not_after)} (in {_ago(not_after - now)}); "
        "renew it and update the Secret: podiam reloads it without a restart"
    )
