"""Projected ServiceAccount tokens, checked offline against the keys the operator pushed.

The container-credentials path knows a pod by the token the kubelet projects
into it (audience e.g. ``pods.eks.amazonaws.com``), not by its IP. A token is
accepted only when all of these hold (PyJWT does the cryptography):

- its header names an asymmetric algorithm Kubernetes signs with, and a key
  id (``kid``) the operator pushed, of that same algorithm: never ``none``,
  never an HMAC, never a key the token brings along;
- the signature verifies with that key;
- ``iss`` is the pushed issuer, ``aud`` contains the configured audience,
  ``exp`` and ``nbf`` hold (with a small leeway for clock skew);
- its ``kubernetes.io`` claims name a namespace, a ServiceAccount and a pod
  (name and uid), and ``sub`` is that ServiceAccount.

Key rotation: keys the operator stops sending stay accepted for an overlap
(they may still sign tokens that pods hold while the operator's view and the
API server's converge), then go.

PyJWT (and the cryptography library under it, 8 MiB of memory) is imported
on the first token checked: a push only checks each key's shape (a public
RSA or EC key with a kid); a key is parsed the first time a token names it,
and one that cannot be used is then said once and refuses its tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from metadata_proxy import wire

if TYPE_CHECKING:
    import jwt

logger = logging.getLogger(__name__)

# What kube-apiserver can sign service-account tokens with (RSA and ECDSA keys).
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
_KEY_TYPES = frozenset({"RSA", "EC"})

# 400: not a token at all; 401: not one we can trust; 403: trusted, but names no pod served here.
Kind = Literal["malformed", "unauthenticated", "forbidden"]


class Refused(Exception):
    """Why a token gets no credentials: ``kind`` picks the HTTP status, ``message`` is what the caller reads."""

    def __init__(self, kind: Kind, code: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class PodClaims:
    """Who a verified token speaks for; and, for logs, which key signed it (never the token)."""

    namespace: str
    pod_name: str
    pod_uid: str
    service_account: str
    kid: str
    issuer: str
    subject: str

    @property
    def pod(self) -> str:
        return f"{self.namespace}/{self.pod_name}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Key:
    entry: Mapping[str, Any]  # the JWK as pushed (its shape checked)
    issuer: str
    until: float | None  # None: current; else a retired key, accepted until then


def _parse(kid: str, entry: Mapping[str, Any]) -> jwt.PyJWK | str:
    """The key ready to verify with, or why it cannot be used."""
    import jwt

    try:
        parsed = jwt.PyJWK(dict(entry))
    except (jwt.PyJWKError, jwt.InvalidKeyError) as error:
        return f"key {kid!r} skipped: {error}"
    if parsed.algorithm_name not in ALGORITHMS:
        return f"key {kid!r} skipped: algorithm {parsed.algorithm_name} is not one Kubernetes signs with"
    return parsed


class KeySet:
    """The keys tokens are checked with: those of the last push, and retired ones during the overlap."""

    def __init__(self, overlap: float, clock: Callable[[], float] = time.time) -> None:
        self.overlap = overlap
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._parsed: dict[str, tuple[Mapping[str, Any], jwt.PyJWK | str]] = {}  # by kid, with the entry parsed
        self.issuer: str | None = None
        self.fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def replace(self, pushed: wire.ServiceAccountKeys) -> list[str]:
        """Take the pushed keys; keys no longer pushed are retired for the overlap. Returns the problems found.

        A key that is not an RSA or EC public key with an id is skipped (and
        said): a symmetric key in a JWKS could otherwise sign tokens itself.
        """
        now = self._clock()
        fresh: dict[str, _Key] = {}
        problems: list[str] = []
        for number, entry in enumerate(pushed.keys):
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid or entry.get("kty") not in _KEY_TYPES or "d" in entry:
                problems.append(f"key {number} (kid {kid!r}, kty {entry.get('kty')!r}) skipped: only RSA and EC public keys with a kid")
                continue
            fresh[kid] = _Key(entry, pushed.issuer, None)
        for kid, held in self._keys.items():
            if kid in fresh:
                continue
            until = held.until if held.until is not None else now + self.overlap
            if until > now:
                fresh[kid] = dataclasses.replace(held, until=until)
        self._keys = fresh
        self._parsed = {kid: parsed for kid, parsed in self._parsed.items() if kid in fresh and parsed[0] == fresh[kid].entry}
        self.issuer = pushed.issuer
        self.fingerprint = pushed.fingerprint()
        return problems

    def find(self, kid: str) -> _Key | None:
        key = self._keys.get(kid)
        if key is None or (key.until is not None and key.until <= self._clock()):
            return None
        return key

    def parsed(self, kid: str, key: _Key) -> jwt.PyJWK | str:
        """``key`` (found by ``find``) ready to verify with, or why it cannot be; parsed once per push of it."""
        held = self._parsed.get(kid)
        if held is not None and held[0] == key.entry:
            return held[1]
        parsed = _parse(kid, key.entry)
        if isinstance(parsed, str):
            logger.warning("service-account key not used", extra={"problem": parsed})
        self._parsed[kid] = (key.entry, parsed)
        return parsed

    def kids(self) -> list[str]:
        return sorted(self._keys)


def _object(mapping: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = mapping.get(name)
    return value if isinstance(value, Mapping) else {}


def _text(mapping: Mapping[str, Any], name: str) -> str | None:
    value = mapping.get(name)
    return value if isinstance(value, str) and value else None


def verify(token: str, keys: KeySet, audience: str, leeway: float) -> PodClaims:
    """The pod a token speaks for, or :class:`Refused` saying why not."""
    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as error:
        raise Refused("malformed", "InvalidToken", f"the Authorization header is not a JSON Web Token: {error}") from None
    algorithm, kid = header.get("alg"), header.get("kid")
    if algorithm not in ALGORITHMS:
        raise Refused("unauthenticated", "InvalidToken",
                      f"token algorithm {algorithm!r} is not accepted (only {', '.join(sorted(ALGORITHMS))})")
    if not isinstance(kid, str) or not kid:
        raise Refused("unauthenticated", "InvalidToken", "the token names no key id (kid)")
    key = keys.find(kid)
    if key is None:
        raise Refused("unauthenticated", "InvalidToken",
                      f"the token was signed with key {kid!r}, which is not one of the API server's service-account keys "
                      f"the operator pushed to this node ({len(keys)} held)")
    jwk = keys.parsed(kid, key)
    if isinstance(jwk, str):
        raise Refused("unauthenticated", "InvalidToken", f"the token was signed with a key this node cannot use: {jwk}")
    if jwk.algorithm_name != algorithm:
        raise Refused("unauthenticated", "InvalidToken", f"key {kid!r} signs with {jwk.algorithm_name}, not {algorithm}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, jwk.key, algorithms=[algorithm], audience=audience, issuer=key.issuer, leeway=leeway,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.InvalidSignatureError:
        raise Refused("unauthenticated", "InvalidToken", f"the token's signature does not verify with key {kid!r}") from None
    except jwt.ExpiredSignatureError:
        raise Refused("unauthenticated", "ExpiredToken", "the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise Refused("unauthenticated", "InvalidToken", "the token is not valid yet (nbf)") from None
    except jwt.InvalidAudienceError:
        raise Refused("unauthenticated", "InvalidToken", f"the token's audience does not include {audience!r}") from None
    except jwt.InvalidIssuerError:
        raise Refused("unauthenticated", "InvalidToken", f"the token's issuer is not {key.issuer!r}") from None
    except jwt.DecodeError as error:
        raise Refused("malformed", "InvalidToken", f"the token cannot be decoded: {error}") from None
    except jwt.InvalidTokenError as error:
        raise Refused("unauthenticated", "InvalidToken", f"the token is not valid: {error}") from None
    return _pod_claims(claims, kid, key.issuer)


def _pod_claims(claims: Mapping[str, Any], kid: str, issuer: str) -> PodClaims:
    kube = _object(claims, "kubernetes.io")
    pod, account = _object(kube, "pod"), _object(kube, "serviceaccount")
    namespace, account_name = _text(kube, "namespace"), _text(account, "name")
    subject = str(claims.get("sub"))
    if namespace is None or account_name is None:
        raise Refused("unauthenticated", "InvalidToken", "the token carries no kubernetes.io namespace and ServiceAccount claims")
    if subject != f"system:serviceaccount:{namespace}:{account_name}":
        raise Refused("unauthenticated", "InvalidToken", f"the token's subject {subject!r} does not match its kubernetes.io claims")
    pod_name, pod_uid = _text(pod, "name"), _text(pod, "uid")
    if pod_name is None or pod_uid is None:
        raise Refused("forbidden", "AccessDenied",
                      f"the token of ServiceAccount {namespace}/{account_name} is not bound to a pod: use the pod's projected "
                      "token (a serviceAccountToken volume), whose claims name the pod")
    return PodClaims(namespace, pod_name, pod_uid, account_name, kid, issuer, subject)
