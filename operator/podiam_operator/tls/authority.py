"""The CA of ``auto`` mode and its rotation, as pure state transitions.

A rotation never leaves a peer distrusting the other's certificate, because
the trust bundle always holds the CA of every leaf still in use:

1. *introduce*: a new CA joins the bundle; the old one still signs.
2. *switch* (one overlap window later, once every proxy and replica holds
   the new bundle): the new CA signs; leaves are re-issued from it; the old
   CA stays in the bundle.
3. *retire* (one more window later, once every proxy and replica holds a
   leaf of the new CA): the old CA leaves the bundle.

The state lives in the CA Secret: ``tls.crt``/``tls.key`` the signing CA,
``ca.crt`` the bundle, ``next.crt``/``next.key`` an introduced CA,
``previous.crt`` retiring CAs, and the step and its time as annotations.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from metadata_proxy import wire
from podiam_operator import _settings
from podiam_operator.tls import checks, pki

# The layout of a kubernetes.io/tls Secret, which the leaves' Secrets share.
CERT = "tls.crt"
KEY = "tls.key"
BUNDLE = "ca.crt"
NEXT_CERT = "next.crt"
NEXT_KEY = "next.key"
PREVIOUS = "previous.crt"

PHASE_ANNOTATION = "podiam.io/ca-rotation"
SINCE_ANNOTATION = "podiam.io/ca-rotation-since"


class Phase(str, enum.Enum):
    STEADY = "steady"
    INTRODUCED = "introduced"
    SWITCHED = "switched"


@dataclasses.dataclass(frozen=True)
class CaState:
    active: pki.KeyPair
    pending: pki.KeyPair | None = None
    retiring: tuple[x509.Certificate, ...] = ()
    since: datetime.datetime | None = None

    @property
    def phase(self) -> Phase:
        if self.pending is not None:
            return Phase.INTRODUCED
        if self.retiring:
            return Phase.SWITCHED
        return Phase.STEADY

    def bundle(self) -> tuple[x509.Certificate, ...]:
        certs = [self.active.cert]
        if self.pending is not None:
            certs.append(self.pending.cert)
        certs.extend(self.retiring)
        unique: dict[bytes, x509.Certificate] = {}
        for cert in certs:
            unique.setdefault(cert.fingerprint(hashes.SHA256()), cert)
        return tuple(unique.values())

    def bundle_pem(self) -> bytes:
        return pki.certs_to_pem(self.bundle())


def new_ca(settings: _settings.OperatorSettings, now: datetime.datetime) -> pki.KeyPair:
    key = pki.generate_key(settings.tls_key_type)
    return pki.KeyPair((pki.issue_ca(key, now=now, lifetime=settings.tls_ca_lifetime),), key)


def initial(settings: _settings.OperatorSettings, now: datetime.datetime) -> CaState:
    return CaState(active=new_ca(settings, now), since=now)


def step(state: CaState, settings: _settings.OperatorSettings, now: datetime.datetime, *, force: bool = False) -> CaState | None:
    """The next state of a rotation, or None when nothing is due yet.

    ``force`` starts a rotation now (an operator-requested one); it does
    nothing while a rotation is under way.
    """
    overlap = settings.tls_ca_overlap
    since = state.since or now
    if state.pending is not None:
        if now < since + overlap:
            return None
        return CaState(active=state.pending, retiring=(state.active.cert,), since=now)
    if state.retiring:
        if now < since + overlap:
            return None
        return CaState(active=state.active, since=now)
    expires = state.active.cert.not_valid_after_utc
    if now + 2 * overlap >= expires:
        # Too late for an overlap (the operator was off, or lifetimes are
        # tiny): an expired CA fails every push already, so replace it now.
        return CaState(active=new_ca(settings, now), since=now)
    if force or now >= pki.renewal_point(state.active.cert, settings.tls_renew_at):
        return CaState(active=state.active, pending=new_ca(settings, now), since=now)
    return None


def next_check(state: CaState, settings: _settings.OperatorSettings, now: datetime.datetime) -> datetime.datetime:
    """When :func:`step` may next have something to do."""
    if state.phase is not Phase.STEADY:
        return (state.since or now) + settings.tls_ca_overlap
    return min(pki.renewal_point(state.active.cert, settings.tls_renew_at), state.active.cert.not_valid_after_utc - 2 * settings.tls_ca_overlap)


# The Secret's contents ------------------------------------------------------


def to_secret(state: CaState) -> tuple[dict[str, bytes], dict[str, str]]:
    """(data, annotations) of the CA Secret."""
    data = {CERT: state.active.cert_pem(), KEY: state.active.key_pem(), BUNDLE: state.bundle_pem()}
    if state.pending is not None:
        data[NEXT_CERT] = state.pending.cert_pem()
        data[NEXT_KEY] = state.pending.key_pem()
    if state.retiring:
        data[PREVIOUS] = pki.certs_to_pem(state.retiring)
    annotations = {PHASE_ANNOTATION: state.phase.value}
    if state.since is not None:
        annotations[SINCE_ANNOTATION] = wire.rfc3339(state.since)
    return data, annotations


def from_secret(data: Mapping[str, bytes], annotations: Mapping[str, str], what: str) -> CaState:
    """Parse the CA Secret; a damaged one fails with a message naming the key."""
    def pair(cert_key: str, key_key: str) -> pki.KeyPair:
        if cert_key not in data or key_key not in data:
            raise checks.TlsProblem(checks.MISSING, f"{what} lacks {cert_key if cert_key not in data else key_key}")
        certs = pki.certs_from_pem(data[cert_key], f"{what} key {cert_key}")
        key = pki.key_from_pem(data[key_key], f"{what} key {key_key}")
        if not pki.same_public_key(certs[0], key):
            raise checks.TlsProblem(checks.KEY_MISMATCH, f"{what}: {key_key} does not belong to {cert_key}")
        return pki.KeyPair(certs[:1], key)

    try:
        active = pair(CERT, KEY)
        pending = pair(NEXT_CERT, NEXT_KEY) if NEXT_CERT in data else None
        retiring = pki.certs_from_pem(data[PREVIOUS], f"{what} key {PREVIOUS}") if PREVIOUS in data else ()
    except pki.PemError as error:
        raise checks.TlsProblem(checks.MALFORMED, str(error)) from None
    # A hand-edited annotation that is no time: the step then counts from now.
    since = wire.parse_rfc3339(annotations[SINCE_ANNOTATION]) if SINCE_ANNOTATION in annotations else None
    return CaState(active=active, pending=pending, retiring=tuple(retiring), since=since)
