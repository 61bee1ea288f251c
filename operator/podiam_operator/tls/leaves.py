"""The two leaves of ``auto`` mode (the proxies' server certificate and the
operator's client certificate): what they must say, when they are due, how
they are issued. Pure: the clock is a parameter."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Mapping

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from metadata_proxy import wire
from podiam_operator import _settings
from podiam_operator.tls import authority, checks, pki

CERT, KEY, BUNDLE = authority.CERT, authority.KEY, authority.BUNDLE


@dataclasses.dataclass(frozen=True)
class Spec:
    common_name: str
    dns_names: tuple[str, ...]
    server: bool
    ip_addresses: tuple[str, ...] = ()


def proxy_spec(settings: _settings.OperatorSettings) -> Spec:
    """One server certificate shared by every proxy: the operator dials them by IP and verifies this name."""
    return Spec(common_name=settings.proxy_server_name, dns_names=(settings.proxy_server_name,), server=True)


def operator_spec(settings: _settings.OperatorSettings) -> Spec:
    """The operator's client certificate: CN and DNS SAN both carry the identity the proxies require."""
    return Spec(common_name=settings.tls_operator_identity, dns_names=(settings.tls_operator_identity,), server=False)


_MAX_COMMON_NAME = 64  # RFC 5280's ub-common-name


def webhook_spec(settings: _settings.OperatorSettings, namespace: str) -> Spec:
    """The injection webhook's serving certificate: the name the API server calls its Service by, and any extra
    names or addresses (a configuration that calls it by URL, e.g. https://127.0.0.1:8187 for a local operator)."""
    name = f"{settings.tls_webhook_service}.{namespace}.svc"
    extra = settings.tls_webhook_host_list()
    addresses = tuple(host for host in extra if _is_ip(host))
    dns = (name, f"{name}.cluster.local", *(host for host in extra if not _is_ip(host)))
    # X.509 caps a common name at 64 characters, and a long release's Service name passes that; clients (the API
    # server among them) check the SANs, never the CN, so a long name goes to the SANs alone.
    common_name = name if len(name) <= _MAX_COMMON_NAME else str(settings.tls_webhook_service)[:_MAX_COMMON_NAME]
    return Spec(common_name=common_name, dns_names=dns, server=True, ip_addresses=addresses)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def issue(state: authority.CaState, spec: Spec, settings: _settings.OperatorSettings, now: datetime.datetime) -> pki.KeyPair:
    key = pki.generate_key(settings.tls_key_type)
    cert = pki.issue_leaf(
        state.active, key,
        common_name=spec.common_name, dns_names=spec.dns_names, server=spec.server,
        now=now, lifetime=settings.tls_leaf_lifetime, ip_addresses=spec.ip_addresses,
    )
    return pki.KeyPair((cert,), key)


def _matches_spec(cert: x509.Certificate, spec: Spec) -> bool:
    usages = pki.extended_usages(cert)
    wanted = ExtendedKeyUsageOID.SERVER_AUTH if spec.server else ExtendedKeyUsageOID.CLIENT_AUTH
    return (pki.common_names(cert) == [spec.common_name] and tuple(pki.dns_names(cert)) == spec.dns_names
            and tuple(pki.ip_addresses(cert)) == tuple(str(ipaddress.ip_address(ip)) for ip in spec.ip_addresses)
            and usages == [wanted])


def due(
    pair: pki.KeyPair | None,
    state: authority.CaState,
    spec: Spec,
    settings: _settings.OperatorSettings,
    now: datetime.datetime,
) -> str | None:
    """Why this leaf must be (re-)issued now, or None if it is fine."""
    if pair is None:
        return "there is none yet"
    cert = pair.cert
    if not pki.same_public_key(cert, pair.key):
        return "its key does not match its certificate"
    try:
        checks.check_chain(pair.chain, (state.active.cert,), "the certificate", "the signing CA", now)
    except checks.TlsProblem:
        return f"it was not issued by the signing CA {pki.describe(state.active.cert)}"
    if now >= pki.renewal_point(cert, settings.tls_renew_at):
        return f"it reached its renewal point (it expires at {wire.rfc3339(cert.not_valid_after_utc)})"
    if not _matches_spec(cert, spec):
        return "its names or usage differ from the settings"
    if pki.key_type_of(pair.key) is not settings.tls_key_type:
        return f"the key type setting changed to {settings.tls_key_type.value}"
    return None


def next_check(pair: pki.KeyPair, settings: _settings.OperatorSettings) -> datetime.datetime:
    return pki.renewal_point(pair.cert, settings.tls_renew_at)


def to_secret(pair: pki.KeyPair, state: authority.CaState) -> dict[str, bytes]:
    return {CERT: pair.cert_pem(), KEY: pair.key_pem(), BUNDLE: state.bundle_pem()}


def from_secret(data: Mapping[str, bytes]) -> pki.KeyPair | None:
    """Our own leaf back from its Secret; None when it is absent or damaged (it is then re-issued)."""
    if CERT not in data or KEY not in data:
        return None
    try:
        return pki.KeyPair(pki.certs_from_pem(data[CERT], CERT), pki.key_from_pem(data[KEY], KEY))
    except pki.PemError:
        return None
