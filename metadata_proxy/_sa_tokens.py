"""Projected ServiceAccount tokens, checked offline against the keys the operator pushed.

The container-credentials path knows a pod by the token the kubelet projects
into it (audience e.g. ``pods.eks.amazonaws.com``), not by its IP. A token is
accepted only when all of these hold:

- it is a JWS in compact serialization (RFC 7515 §7.1): three parts of
  canonical base64url (no padding, no other alphabet, no stray bits), a JSON
  object for header and payload, 8192 characters at most (a projected token
  is about 1 kB);
- its header names an asymmetric algorithm Kubernetes signs with, and a key
  id (``kid``) the operator pushed, of that same algorithm: never ``none``,
  never an HMAC, never a key the token brings along (``jwk``, ``jku``,
  ``x5u`` and ``x5c`` are never read), and no ``crit`` extension;
- the signature verifies with that key;
- ``exp``, ``iss``, ``aud`` and ``sub`` are there; ``iss`` is the pushed
  issuer, ``aud`` (a string or a list of strings) contains the configured
  audience, ``exp``, ``nbf`` and ``iat`` are numbers and ``exp`` and ``nbf``
  hold (with a small leeway for clock skew; ``iat`` is not in the future
  beyond it either);
- its ``kubernetes.io`` claims name a namespace, a ServiceAccount and a pod
  (name and uid), and ``sub`` is that ServiceAccount.

Key rotation: keys the operator stops sending stay accepted for an overlap
(they may still sign tokens that pods hold while the operator's view and the
API server's converge), then go.

RSA signatures (RS256/384/512: what kubeadm, kind and EKS clusters sign
with) are verified here with the standard library (RSASSA-PKCS1-v1_5, RFC
8017 §8.2.2, by encoding the expected block and comparing): the proxy then
never imports the cryptography library, 8 MiB of memory. ECDSA signatures
(ES256/384/512) are verified with cryptography, imported the first time a
token names an EC key. A push only checks each key's shape (a public RSA or
EC key with a kid); a key is parsed the first time a token names it, and one
that cannot be used is then said once and refuses its tokens.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from metadata_proxy import wire

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

logger = logging.getLogger(__name__)

# What kube-apiserver can sign service-account tokens with (RSA and ECDSA keys), and the hash of each.
_HASHES = {"RS256": "sha256", "RS384": "sha384", "RS512": "sha512", "ES256": "sha256", "ES384": "sha384", "ES512": "sha512"}
ALGORITHMS = frozenset(_HASHES)
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
_KEY_TYPES = frozenset({"RSA", "EC"})

# Eight times a projected token (about 1 kB; 2.7 kB signed with a 16384-bit RSA key): nothing longer is parsed.
_MAX_TOKEN_LENGTH = 8192
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")

# RSA keys from 2048 bits (what kubeadm, kind and EKS generate; smaller ones are breakable) to 16384 (OpenSSL's
# limit, which bounds a token check's cost), with an exponent below 2^31 as Go's crypto/rsa, kube-apiserver's, requires.
_RSA_BITS = range(2048, 16384 + 1)
_RSA_EXPONENTS = range(3, 2**31)
# DigestInfo's DER up to the digest, per hash (RFC 8017 §9.2, note 1): SEQUENCE {SEQUENCE {OID, NULL}, OCTET STRING}.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
# Each curve's one algorithm and its coordinates' size in bytes (RFC 7518 §3.4, §6.2.1).
_CURVES = {"P-256": ("ES256", 32), "P-384": ("ES384", 48), "P-521": ("ES512", 66)}

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


# -- keys ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _RsaKey:
    """An RSA public key; its signatures are checked here, with the standard library."""

    algorithm: str
    modulus: int
    exponent: int

    def verifies(self, message: bytes, signature: bytes) -> bool:
        """RSASSA-PKCS1-v1_5-VERIFY (RFC 8017 §8.2.2): the block the signature opens to must be, byte for byte, the one
        expected for ``message``. Built and compared, never parsed: parsing it is how verifiers have taken forgeries
        (Bleichenbacher's 2006 attack on exponent 3, and the lenient DigestInfo parsers after it)."""
        size = (self.modulus.bit_length() + 7) // 8
        if len(signature) != size:
            return False
        representative = int.from_bytes(signature, "big")
        if representative >= self.modulus:
            return False
        opened = pow(representative, self.exponent, self.modulus).to_bytes(size, "big")
        return hmac.compare_digest(opened, _pkcs1_v15_block(_HASHES[self.algorithm], message, size))


def _pkcs1_v15_block(hash_name: str, message: bytes, size: int) -> bytes:
    """EMSA-PKCS1-v1_5-ENCODE (RFC 8017 §9.2): 0x00 0x01, 0xFF bytes up to ``size``, 0x00, DigestInfo of ``message``."""
    digest_info = _DIGEST_INFO[hash_name] + hashlib.new(hash_name, message).digest()
    padding = size - len(digest_info) - 3
    assert padding >= 8, "an RSA key of 2048 bits or more leaves 170 bytes of padding at least"
    return b"\x00\x01" + b"\xff" * padding + b"\x00" + digest_info


@dataclasses.dataclass(frozen=True, slots=True)
class _EcKey:
    """An EC public key; its ECDSA signatures are checked with the cryptography library."""

    algorithm: str
    coordinate_size: int  # bytes; a JWS signature is r then s, each of this size (RFC 7518 §3.4)
    public_key: ec.EllipticCurvePublicKey

    def verifies(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        if len(signature) != 2 * self.coordinate_size:
            return False
        r = int.from_bytes(signature[:self.coordinate_size], "big")
        s = int.from_bytes(signature[self.coordinate_size:], "big")
        digests: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                                                    "sha512": hashes.SHA512()}
        try:
            self.public_key.verify(utils.encode_dss_signature(r, s), message, ec.ECDSA(digests[_HASHES[self.algorithm]]))
        except InvalidSignature:
            return False
        return True


_PublicKey: TypeAlias = _RsaKey | _EcKey


def _parse(kid: str, entry: Mapping[str, Any]) -> _PublicKey | str:
    """The key ready to verify with, or why it cannot be used."""
    try:
        return _rsa_key(entry) if entry["kty"] == "RSA" else _ec_key(entry)
    except ValueError as error:
        return f"key {kid!r} skipped: {error}"


def _rsa_key(entry: Mapping[str, Any]) -> _RsaKey:
    algorithm = _algorithm(entry, "RS256", _RSA_ALGORITHMS, "an RSA key")
    modulus, exponent = _unsigned(entry, "n"), _unsigned(entry, "e")
    if modulus.bit_length() not in _RSA_BITS:
        raise ValueError(f"an RSA key of {modulus.bit_length()} bits: from {_RSA_BITS[0]} to {_RSA_BITS[-1]} only")
    if modulus % 2 == 0:
        raise ValueError("its modulus (n) is even: not an RSA modulus")
    if exponent not in _RSA_EXPONENTS or exponent % 2 == 0:
        raise ValueError(f"its exponent (e) is not odd, or not from {_RSA_EXPONENTS[0]} to {_RSA_EXPONENTS[-1]}")
    return _RsaKey(algorithm, modulus, exponent)


def _ec_key(entry: Mapping[str, Any]) -> _EcKey:
    curve = _field(entry, "crv")
    if curve not in _CURVES:
        raise ValueError(f"curve {curve!r} is not one of {', '.join(_CURVES)}")
    algorithm, size = _CURVES[curve]
    _algorithm(entry, algorithm, frozenset({algorithm}), f"a {curve} key")
    x, y = (int.from_bytes(_coordinate(entry, name, size), "big") for name in ("x", "y"))
    from cryptography.hazmat.primitives.asymmetric import ec

    curves: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
    try:
        public_key = ec.EllipticCurvePublicNumbers(x, y, curves[curve]()).public_key()
    except ValueError:
        raise ValueError(f"its point (x, y) is not on curve {curve}") from None
    return _EcKey(algorithm, size, public_key)


def _algorithm(entry: Mapping[str, Any], default: str, accepted: frozenset[str], what: str) -> str:
    """The one algorithm the key signs with: the JWK's ``alg``, else the one kube-apiserver signs with such a key."""
    algorithm = entry.get("alg", default)
    if not isinstance(algorithm, str) or algorithm not in accepted:
        raise ValueError(f"algorithm {algorithm!r} is not one Kubernetes signs with {what}")
    return algorithm


def _field(entry: Mapping[str, Any], name: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str):
        raise ValueError(f"it has no {name!r}")
    return value


def _unsigned(entry: Mapping[str, Any], name: str) -> int:
    """A JWK integer: base64url of its unsigned big-endian bytes (RFC 7518 §6.3.1)."""
    return int.from_bytes(_base64url(_field(entry, name), f"its {name!r}"), "big")


def _coordinate(entry: Mapping[str, Any], name: str, size: int) -> bytes:
    """An EC point's coordinate: exactly the curve's size, leading zeros included (RFC 7518 §6.2.1.2)."""
    data = _base64url(_field(entry, name), f"its {name!r}")
    if len(data) != size:
        raise ValueError(f"its {name!r} is {len(data)} bytes, not {size}")
    return data


class KeySet:
    """The keys tokens are checked with: those of the last push, and retired ones during the overlap."""

    def __init__(self, overlap: float, clock: Callable[[], float] = time.time) -> None:
        self.overlap = overlap
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._parsed: dict[str, tuple[Mapping[str, Any], _PublicKey | str]] = {}  # by kid, with the entry parsed
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

    def now(self) -> float:
        """The wall clock keys retire by, and tokens expire by."""
        return self._clock()

    def find(self, kid: str) -> _Key | None:
        key = self._keys.get(kid)
        if key is None or (key.until is not None and key.until <= self.now()):
            return None
        return key

    def parsed(self, kid: str, key: _Key) -> _PublicKey | str:
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


def verify(token: str, keys: KeySet, audience: str, leeway: float) -> PodClaims:
    """The pod a token speaks for, or :class:`Refused` saying why not."""
    try:
        jws = _jws(token)
    except ValueError as error:
        raise Refused("malformed", "InvalidToken", f"the Authorization header is not a JSON Web Token: {error}") from None
    kid, key, public = _signing_key(jws.header, keys)
    if not public.verifies(jws.signing_input, jws.signature):
        raise Refused("unauthenticated", "InvalidToken", f"the token's signature does not verify with key {kid!r}")
    _check_claims(jws.claims, key.issuer, audience, leeway, keys.now())
    return _pod_claims(jws.claims, kid, key.issuer)


# -- the token -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Jws:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes  # what the signature is over: the first two parts, as sent
    signature: bytes


def _jws(token: str) -> _Jws:
    """``token`` read as a JWS in compact serialization (RFC 7515 §7.1); ValueError says why it is not one."""
    if len(token) > _MAX_TOKEN_LENGTH:
        raise ValueError(f"longer than {_MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError(f"{len(parts)} dot-separated parts, not 3")
    header, payload, signature = parts
    return _Jws(_json_object(_base64url(header, "its header"), "its header"),
                _json_object(_base64url(payload, "its payload"), "its payload"),
                f"{header}.{payload}".encode("ascii"), _base64url(signature, "its signature"))


def _base64url(text: str, what: str) -> bytes:
    """``text`` as base64url without padding (RFC 7515 §2), in its one canonical spelling.

    ``base64.urlsafe_b64decode`` alone would take padding, characters of no
    alphabet or of the other one (``+``, ``/``), and a last character whose
    spare bits are not zero: several spellings of one signature.
    """
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError(f"{what} is not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != text.encode("ascii"):
        raise ValueError(f"{what} is not canonical base64url (its last character has stray bits)")
    return data


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, NaN or Infinity, nested deeper than Python recurses
        raise ValueError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json takes NaN and Infinity; a time claim must be a number


def _signing_key(header: Mapping[str, Any], keys: KeySet) -> tuple[str, _Key, _PublicKey]:
    """The pushed key the header names, if it signs with the header's algorithm; else :class:`Refused`.

    Only ``alg`` and ``kid`` are read: a key the token brings or points to
    (``jwk``, ``jku``, ``x5u``, ``x5c``) is never used.
    """
    algorithm, kid = header.get("alg"), header.get("kid")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise Refused("unauthenticated", "InvalidToken",
                      f"token algorithm {algorithm!r} is not accepted (only {', '.join(sorted(ALGORITHMS))})")
    if "crit" in header:  # RFC 7515 §4.1.11: a token is invalid if it needs an extension the recipient does not implement
        raise Refused("unauthenticated", "InvalidToken", "the token needs extensions (crit) this node does not implement")
    if not isinstance(kid, str) or not kid:
        raise Refused("unauthenticated", "InvalidToken", "the token names no key id (kid)")
    key = keys.find(kid)
    if key is None:
        raise Refused("unauthenticated", "InvalidToken",
                      f"the token was signed with key {kid!r}, which is not one of the API server's service-account keys "
                      f"the operator pushed to this node ({len(keys)} held)")
    public = keys.parsed(kid, key)
    if isinstance(public, str):
        raise Refused("unauthenticated", "InvalidToken", f"the token was signed with a key this node cannot use: {public}")
    if public.algorithm != algorithm:
        raise Refused("unauthenticated", "InvalidToken", f"key {kid!r} signs with {public.algorithm}, not {algorithm}")
    return kid, key, public


# -- the claims ------------------------------------------------------------------------------------------------------


def _check_claims(claims: Mapping[str, Any], issuer: str, audience: str, leeway: float, now: float) -> None:
    """The registered claims (RFC 7519 §4.1) checked as PyJWT checks them, with stricter types; :class:`Refused` if not."""
    for name in _REQUIRED_CLAIMS:
        if claims.get(name) is None:
            raise Refused("unauthenticated", "InvalidToken", f"the token is not valid: it has no {name!r} claim")
    audiences = _audiences(claims["aud"])
    if not isinstance(claims["sub"], str):
        raise _undecodable("its 'sub' claim is not a string")
    if _time(claims, "exp") <= now - leeway:
        raise Refused("unauthenticated", "ExpiredToken", "the token has expired")
    for name in ("nbf", "iat"):
        if name in claims and _time(claims, name) > now + leeway:
            raise Refused("unauthenticated", "InvalidToken", f"the token is not valid yet ({name})")
    if claims["iss"] != issuer:
        raise Refused("unauthenticated", "InvalidToken", f"the token's issuer is not {issuer!r}")
    if audience not in audiences:
        raise Refused("unauthenticated", "InvalidToken", f"the token's audience does not include {audience!r}")


def _audiences(value: Any) -> list[str]:
    audiences = [value] if isinstance(value, str) else value
    if not isinstance(audiences, list) or not all(isinstance(audience, str) for audience in audiences):
        raise _undecodable("its 'aud' claim is not a string or a list of strings")
    return audiences


def _time(claims: Mapping[str, Any], name: str) -> float:
    """A NumericDate (RFC 7519 §2): a JSON number of seconds; not a string, not true or false, not beyond a float."""
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise _undecodable(f"its {name!r} claim is not a number")
    return value


def _undecodable(why: str) -> Refused:
    return Refused("malformed", "InvalidToken", f"the token cannot be decoded: {why}")


def _object(mapping: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = mapping.get(name)
    return value if isinstance(value, Mapping) else {}


def _text(mapping: Mapping[str, Any], name: str) -> str | None:
    value = mapping.get(name)
    return value if isinstance(value, str) and value else None


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
