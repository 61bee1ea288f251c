"""ServiceAccount tokens checked by ``_sa_tokens`` itself: every algorithm Kubernetes signs with, hostile tokens and keys.

Tokens are signed by PyJWT and cryptography (what kube-apiserver's tokens are
checked against elsewhere), so an accepted token is one a standard library
signs, and a refused one is refused for the reason said. RSA keys are made
once per module: generating them is what costs here.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

from metadata_proxy import _sa_tokens, wire
from tests.unit.proxy.conftest import AUDIENCE, ISSUER, Clock, Signer, b64, forged_hs256, keys, unsigned

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
LEEWAY = 30.0
RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    """Random RSA keys: 2048 and 3072 bits as clusters use, and 2050, whose modulus does not fill its last byte."""
    return [rsa.generate_private_key(65537, bits) for bits in (2048, 2050, 3072)]


@pytest.fixture
def signer(rsa_keys: list[rsa.RSAPrivateKey]) -> Signer:
    return Signer("RS256", key=rsa_keys[0])


@pytest.fixture
def attacker() -> Signer:
    """Another RSA key (the same size as ``signer``'s), under the same kid when that matters."""
    return Signer("RS256", key=rsa.generate_private_key(65537, 2048))


def key_set(clock: Clock, *signers: Signer, entries: list[dict[str, Any]] | None = None) -> _sa_tokens.KeySet:
    held = _sa_tokens.KeySet(300, clock)
    problems = held.replace(keys(*signers) if entries is None else wire.ServiceAccountKeys(issuer=ISSUER, keys=entries))
    assert not problems
    return held


def verify(token: str, held: _sa_tokens.KeySet) -> _sa_tokens.PodClaims:
    return _sa_tokens.verify(token, held, AUDIENCE, LEEWAY)


def refusal(token: str, held: _sa_tokens.KeySet) -> _sa_tokens.Refused:
    with pytest.raises(_sa_tokens.Refused) as refused:
        verify(token, held)
    return refused.value


def parts(token: str) -> list[str]:
    return token.split(".")


def with_part(token: str, index: int, part: str) -> str:
    split = parts(token)
    split[index] = part
    return ".".join(split)


def encoded(value: Any) -> str:
    return b64(json.dumps(value).encode())


# -- what PyJWT and cryptography sign verifies; one bit changed, it does not -----------------------------------------


@pytest.mark.parametrize("algorithm", RSA_ALGORITHMS)
def test_rsa_tokens_pyjwt_signs_verify(clock: Clock, rsa_keys: list[rsa.RSAPrivateKey], algorithm: str) -> None:
    for key in rsa_keys:
        signer = Signer(algorithm, key=key)
        held = key_set(clock, signer)
        claims = verify(signer.token(), held)
        assert (claims.pod, claims.pod_uid, claims.kid, claims.issuer) == ("team/app", "uid-1", signer.kid, ISSUER)
        assert_each_bit_counts(signer.token(), held)


@pytest.mark.parametrize("algorithm", EC_ALGORITHMS)
def test_ec_tokens_pyjwt_signs_verify(clock: Clock, algorithm: str) -> None:
    for _ in range(3):
        signer = Signer(algorithm)
        held = key_set(clock, signer)
        assert verify(signer.token(), held).pod == "team/app"
        assert_each_bit_counts(signer.token(), held)


def assert_each_bit_counts(token: str, held: _sa_tokens.KeySet) -> None:
    """A bit flipped in the signature, at 16 places across it: the token is refused, as PyJWT refuses it."""
    signature = base64.urlsafe_b64decode(parts(token)[2] + "==")
    for at in range(0, len(signature), max(1, len(signature) // 16)):
        flipped = bytearray(signature)
        flipped[at] ^= 1 << (at % 8)
        changed = with_part(token, 2, b64(bytes(flipped)))
        assert "does not verify" in refusal(changed, held).message
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(changed, held_key(token, held), algorithms=sorted(_sa_tokens.ALGORITHMS), audience=AUDIENCE)


def held_key(token: str, held: _sa_tokens.KeySet) -> Any:
    kid = jwt.get_unverified_header(token)["kid"]
    found = held.find(kid)
    assert found is not None
    return jwt.PyJWK(dict(found.entry)).key


def test_an_rsa_key_without_alg_signs_rs256_only(clock: Clock, signer: Signer) -> None:
    del signer.jwk["alg"]
    held = key_set(clock, signer)
    assert verify(signer.token(), held).pod == "team/app"
    assert refusal(signer.token(algorithm="RS384"), held).message == f"key {signer.kid!r} signs with RS256, not RS384"


def test_an_ec_key_without_alg_signs_its_curves_algorithm(clock: Clock) -> None:
    signer = Signer("ES384")
    del signer.jwk["alg"]
    assert verify(signer.token(), key_set(clock, signer)).pod == "team/app"


def test_a_modulus_written_with_a_leading_zero_is_the_same_key(clock: Clock, signer: Signer) -> None:
    modulus = base64.urlsafe_b64decode(signer.jwk["n"] + "==")
    signer.jwk["n"] = b64(b"\0" + modulus)
    assert verify(signer.token(), key_set(clock, signer)).pod == "team/app"


# -- hostile tokens ----------------------------------------------------------------------------------------------------


def rsa_signature_of(signer: Signer, number: int) -> bytes:
    size = (signer.key.key_size + 7) // 8
    return number.to_bytes(size, "big")


def modulus(signer: Signer) -> int:
    return int(signer.key.public_key().public_numbers().n)


def noncanonical_last_character(token: str) -> str:
    """The signature's last character with a spare bit set: a lenient decoder reads the same bytes."""
    signature = parts(token)[2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(signature) % 4 in (2, 3)  # a last character with spare bits
    respelled = signature[:-1] + alphabet[alphabet.index(signature[-1]) | 1]
    assert base64.urlsafe_b64decode(respelled + "==") == base64.urlsafe_b64decode(signature + "==")
    return with_part(token, 2, respelled)


def standard_alphabet(token: str) -> str:
    respelled = token.translate(str.maketrans("-_", "+/"))
    assert respelled != token
    return respelled


def tampered(signer: Signer) -> str:
    token = signer.token()
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["kubernetes.io"]["pod"]["uid"] = "uid-someone-else"
    return with_part(token, 1, encoded(claims))


def without(name: str) -> Any:
    def make(signer: Signer) -> str:
        claims = signer.claims()
        del claims[name]
        return jwt.encode(claims, signer.key, algorithm=signer.algorithm, headers={"kid": signer.kid})
    return make


def signed(payload: bytes) -> Any:
    return lambda signer: signer.sign(payload)


def header(value: Any) -> Any:
    return lambda signer: with_part(signer.token(), 0, encoded(value) if not isinstance(value, bytes) else b64(value))


def ec_token_under(signer: Signer) -> str:
    """An ES256 token under the RSA key's kid: the algorithm the kid's key does not sign with."""
    return Signer("ES256", kid=signer.kid).token()


MALFORMED: list[tuple[str, Any, str]] = [
    ("2 parts", lambda s: ".".join(parts(s.token())[:2]), "2 dot-separated parts, not 3"),
    ("4 parts", lambda s: s.token() + ".e30", "4 dot-separated parts, not 3"),
    ("padded base64url", lambda s: s.token() + "==", "its signature is not base64url"),
    ("the standard alphabet", lambda s: standard_alphabet(s.token()), "is not base64url"),
    ("a spare bit set", lambda s: noncanonical_last_character(s.token()), "its signature is not canonical base64url"),
    ("a line break inside", lambda s: s.token().replace(".", ".\n", 1), "its payload is not base64url"),
    ("a length no base64 has", lambda s: with_part(s.token(), 0, "eyJhbGc"[:5]), "its header is not base64url"),
    ("header a JSON array", header(["RS256"]), "its header is not a JSON object"),
    ("header not JSON", header(b'{"alg": "RS256"'), "its header is not JSON"),
    ("header not UTF-8", header(b'{"alg": "\xff"}'), "its header is not JSON"),
    ("payload a JSON string", signed(b'"claims"'), "its payload is not a JSON object"),
    ("payload with NaN", signed(b'{"exp": NaN}'), "its payload is not JSON"),
    ("payload nested beyond recursion", signed(b"[" * 5000), "its payload is not JSON"),
    ("longer than 8192 characters", lambda s: s.token(padding="x" * 8192), "longer than 8192 characters"),
    ("exp a string", lambda s: s.token(exp=str(int(time.time()) + 60)), "its 'exp' claim is not a number"),
    ("exp true", lambda s: s.token(exp=True), "its 'exp' claim is not a number"),
    ("exp beyond a float", signed(b'{"exp": 1e400, "iss": "%s", "aud": "%s", "sub": "x"}' % (ISSUER.encode(), AUDIENCE.encode())),
     "its 'exp' claim is not a number"),
    ("nbf a string", lambda s: s.token(nbf="0"), "its 'nbf' claim is not a number"),
    ("iat false", lambda s: s.token(iat=False), "its 'iat' claim is not a number"),
    ("aud a number", lambda s: s.token(aud=7), "its 'aud' claim is not a string or a list of strings"),
    ("aud a list with a number", lambda s: s.token(aud=[AUDIENCE, 7]), "its 'aud' claim is not a string or a list of strings"),
    ("sub a number", lambda s: s.token(sub=7), "its 'sub' claim is not a string"),
]

UNAUTHENTICATED: list[tuple[str, Any, str]] = [
    ("alg none", unsigned, "algorithm 'none' is not accepted"),
    ("HS256 with the RSA public key as secret", forged_hs256, "algorithm 'HS256' is not accepted"),
    ("alg a list", header({"alg": ["RS256"], "kid": "k"}), "algorithm ['RS256'] is not accepted"),
    ("an ES256 token under the RSA key's kid", ec_token_under, "signs with RS256, not ES256"),
    ("RS512 under an RS256 key", lambda s: s.token(algorithm="RS512"), "signs with RS256, not RS512"),
    ("crit", lambda s: s.sign(json.dumps(s.claims()).encode(), crit=["exp"], exp=1), "extensions (crit)"),
    ("no kid", lambda s: jwt.encode(s.claims(), s.key, algorithm="RS256"), "names no key id"),
    ("signature a byte short", lambda s: with_part(s.token(), 2, b64(base64.urlsafe_b64decode(parts(s.token())[2] + "==")[:-1])),
     "does not verify"),
    ("signature a byte long", lambda s: with_part(s.token(), 2, b64(base64.urlsafe_b64decode(parts(s.token())[2] + "==") + b"\0")),
     "does not verify"),
    ("signature a zero byte long (the same number)",
     lambda s: with_part(s.token(), 2, b64(b"\0" + base64.urlsafe_b64decode(parts(s.token())[2] + "=="))), "does not verify"),
    ("s = n", lambda s: with_part(s.token(), 2, b64(rsa_signature_of(s, modulus(s)))), "does not verify"),
    ("s = n + 1", lambda s: with_part(s.token(), 2, b64(rsa_signature_of(s, modulus(s) + 1))), "does not verify"),
    ("s all ones", lambda s: with_part(s.token(), 2, b64(b"\xff" * ((s.key.key_size + 7) // 8))), "does not verify"),
    ("s = 0", lambda s: with_part(s.token(), 2, b64(rsa_signature_of(s, 0))), "does not verify"),
    ("s = 1", lambda s: with_part(s.token(), 2, b64(rsa_signature_of(s, 1))), "does not verify"),
    ("no signature", lambda s: with_part(s.token(), 2, ""), "does not verify"),
    ("the signature of another payload", lambda s: with_part(s.token(("team", "other", "uid-2")), 2, parts(s.token())[2]),
     "does not verify"),
    ("payload tampered after signing", tampered, "does not verify"),
    ("wrong issuer", lambda s: s.token(iss=ISSUER + "/"), f"issuer is not {ISSUER!r}"),
    ("iss missing", without("iss"), "it has no 'iss' claim"),
    ("aud missing", without("aud"), "it has no 'aud' claim"),
    ("sub missing", without("sub"), "it has no 'sub' claim"),
    ("exp missing", without("exp"), "it has no 'exp' claim"),
    ("exp null", lambda s: s.token(exp=None), "it has no 'exp' claim"),
    ("aud a list without the audience", lambda s: s.token(aud=["sts.amazonaws.com", AUDIENCE + "x"]),
     f"audience does not include {AUDIENCE!r}"),
    ("aud another string", lambda s: s.token(aud="sts.amazonaws.com"), "audience does not include"),
    ("nbf beyond the leeway", lambda s: s.token(nbf=int(time.time()) + LEEWAY + 10), "not valid yet (nbf)"),
    ("iat beyond the leeway", lambda s: s.token(iat=int(time.time()) + LEEWAY + 10), "not valid yet (iat)"),
    ("kubernetes.io claims of another ServiceAccount", lambda s: s.token(sub="system:serviceaccount:team:admin"), "does not match"),
]


@pytest.mark.parametrize(("case", "make", "said"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_tokens(clock: Clock, signer: Signer, case: str, make: Any, said: str) -> None:
    refused = refusal(make(signer), key_set(clock, signer))
    assert (refused.kind, refused.code, said in refused.message) == ("malformed", "InvalidToken", True), refused.message


@pytest.mark.parametrize(("case", "make", "said"), UNAUTHENTICATED, ids=[c[0] for c in UNAUTHENTICATED])
def test_untrusted_tokens(clock: Clock, signer: Signer, case: str, make: Any, said: str) -> None:
    refused = refusal(make(signer), key_set(clock, signer))
    assert (refused.kind, refused.code, said in refused.message) == ("unauthenticated", "InvalidToken", True), refused.message


def test_a_signature_plus_the_modulus_is_refused(clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    """s + n opens to the same block as s: only the check s < n refuses it. With a 2050-bit modulus, whose signatures
    take 257 bytes, s + n always fits in the signature's length."""
    signer = Signer("RS256", key=rsa_keys[1])
    token = signer.token()
    s = int.from_bytes(base64.urlsafe_b64decode(parts(token)[2] + "=="), "big")
    assert verify(token, key_set(clock, signer)).pod == "team/app"
    assert "does not verify" in refusal(with_part(token, 2, b64(rsa_signature_of(signer, s + modulus(signer)))),
                                        key_set(clock, signer)).message


def test_another_key_under_the_same_kid(clock: Clock, signer: Signer, attacker: Signer) -> None:
    forged = attacker.token(kid=signer.kid)
    assert refusal(forged, key_set(clock, signer)).message == f"the token's signature does not verify with key {signer.kid!r}"


@pytest.mark.parametrize("carried", ["jwk", "jku", "x5u", "x5c"])
def test_a_key_the_token_brings_is_never_used(clock: Clock, signer: Signer, attacker: Signer, carried: str) -> None:
    own = {"jwk": attacker.jwk, "jku": "https://attacker.example/jwks", "x5u": "https://attacker.example/cert",
           "x5c": ["MIIB"]}[carried]
    held = key_set(clock, signer)
    under_the_kid = attacker.sign(json.dumps(attacker.claims()).encode(), kid=signer.kid, **{carried: own})
    assert "does not verify" in refusal(under_the_kid, held).message
    with_no_kid = jwt.encode(attacker.claims(), attacker.key, algorithm="RS256", headers={carried: own})
    assert "names no key id" in refusal(with_no_kid, held).message


def test_expiry_and_not_before_with_the_leeway(clock: Clock, signer: Signer) -> None:
    held = key_set(clock, signer)
    now = int(clock.now)
    assert verify(signer.token(exp=now - LEEWAY + 5), held).pod == "team/app"  # expired, within the leeway
    refused = refusal(signer.token(exp=now - LEEWAY - 5), held)
    assert (refused.kind, refused.code, refused.message) == ("unauthenticated", "ExpiredToken", "the token has expired")
    assert verify(signer.token(nbf=now + LEEWAY - 5, iat=now + LEEWAY - 5), held).pod == "team/app"
    clock.now += 3600 + LEEWAY + 1  # the same token, later: the key set's clock decides
    assert refusal(signer.token(exp=now + 3600), held).code == "ExpiredToken"


def test_a_single_audience_string_and_extra_header_fields(clock: Clock, signer: Signer) -> None:
    token = signer.sign(json.dumps(signer.claims(aud=AUDIENCE)).encode(), typ="JWT", cty="x")
    assert verify(token, key_set(clock, signer)).pod == "team/app"


def test_an_ec_signature_of_the_wrong_length_or_in_der(clock: Clock) -> None:
    signer = Signer("ES256")
    held = key_set(clock, signer)
    token = signer.token()
    raw = base64.urlsafe_b64decode(parts(token)[2] + "==")
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    padded = b"\0" + raw[:32] + b"\0" + raw[32:]  # r and s each one byte longer: the same numbers, not the JWS length
    for signature in (raw[:-1], raw + b"\0", padded, der, b"\0" * 64):
        assert "does not verify" in refusal(with_part(token, 2, b64(signature)), held).message
    # cryptography's own signature over the same input, turned into r || s, verifies: the conversion is right.
    signing_input = ".".join(parts(token)[:2]).encode()
    r, s = utils.decode_dss_signature(signer.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    assert verify(with_part(token, 2, b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))), held).pod == "team/app"


# -- hostile and unusable keys ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # PyJWT signing with it, in the test
def test_a_1024_bit_rsa_key_is_refused_and_said_once(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    weak = Signer("RS256", key=rsa.generate_private_key(65537, 1024))
    held = key_set(clock, weak)  # its shape is fine: pushed, then refused when a token names it
    with caplog.at_level(logging.WARNING, logger="metadata_proxy._sa_tokens"):
        for _ in range(2):
            refused = refusal(weak.token(), held)
            assert refused.message == (f"the token was signed with a key this node cannot use: key {weak.kid!r} skipped: "
                                       "an RSA key of 1024 bits: from 2048 to 16384 only")
    assert [r.getMessage() for r in caplog.records] == ["service-account key not used"]
    assert caplog.records[0].problem == f"key {weak.kid!r} skipped: an RSA key of 1024 bits: from 2048 to 16384 only"


def test_a_private_rsa_key_is_skipped_on_push(signer: Signer, clock: Clock) -> None:
    private = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signer.key)), "kid": "private", "alg": "RS256"}
    assert "d" in private
    held = _sa_tokens.KeySet(300, clock)
    problems = held.replace(wire.ServiceAccountKeys(issuer=ISSUER, keys=[private]))
    assert problems == ["key 0 (kid 'private', kty 'RSA') skipped: only RSA and EC public keys with a kid"]
    assert held.kids() == [] and "not one of the API server's" in refusal(signer.token(kid="private"), held).message


def rsa_jwk(signer: Signer, **fields: Any) -> dict[str, Any]:
    return {**signer.jwk, **fields}


def number(value: int) -> str:
    return b64(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


UNUSABLE_RSA: list[tuple[str, Any, str]] = [
    ("alg of the other family", lambda s: rsa_jwk(s, alg="ES256"), "algorithm 'ES256' is not one Kubernetes signs with an RSA key"),
    ("alg HS256", lambda s: rsa_jwk(s, alg="HS256"), "algorithm 'HS256' is not one Kubernetes signs with an RSA key"),
    ("no n", lambda s: {k: v for k, v in s.jwk.items() if k != "n"}, "it has no 'n'"),
    ("n padded", lambda s: rsa_jwk(s, n=s.jwk["n"] + "=="), "its 'n' is not base64url"),
    ("n even", lambda s: rsa_jwk(s, n=number(modulus(s) - 1)), "its modulus (n) is even"),
    ("n of 16385 bits", lambda s: rsa_jwk(s, n=number(2**16384 + 1)), "an RSA key of 16385 bits"),
    ("e = 1", lambda s: rsa_jwk(s, e=number(1)), "its exponent (e) is not odd, or not from 3 to 2147483647"),
    ("e even", lambda s: rsa_jwk(s, e=number(65536)), "its exponent (e) is not odd"),
    ("e of 2^31 + 1", lambda s: rsa_jwk(s, e=number(2**31 + 1)), "its exponent (e) is not odd, or not from 3"),
    ("e a list", lambda s: rsa_jwk(s, e=["AQAB"]), "it has no 'e'"),
]


@pytest.mark.parametrize(("case", "make", "said"), UNUSABLE_RSA, ids=[c[0] for c in UNUSABLE_RSA])
def test_unusable_rsa_keys(clock: Clock, signer: Signer, case: str, make: Any, said: str) -> None:
    held = key_set(clock, entries=[make(signer)])
    refused = refusal(signer.token(), held)
    assert (refused.kind, said in refused.message) == ("unauthenticated", True), refused.message


def ec_jwk(signer: Signer, **fields: Any) -> dict[str, Any]:
    return {**signer.jwk, **fields}


def off_the_curve(signer: Signer) -> dict[str, Any]:
    y = int.from_bytes(base64.urlsafe_b64decode(signer.jwk["y"] + "=="), "big")
    return ec_jwk(signer, y=b64((y ^ 1).to_bytes(32, "big")))


UNUSABLE_EC: list[tuple[str, Any, str]] = [
    ("alg of another curve", lambda s: ec_jwk(s, alg="ES384"), "algorithm 'ES384' is not one Kubernetes signs with a P-256 key"),
    ("alg of the other family", lambda s: ec_jwk(s, alg="RS256"), "algorithm 'RS256' is not one Kubernetes signs with a P-256 key"),
    ("another curve", lambda s: ec_jwk(s, crv="secp256k1"), "curve 'secp256k1' is not one of P-256, P-384, P-521"),
    ("x a byte short", lambda s: ec_jwk(s, x=b64(base64.urlsafe_b64decode(s.jwk["x"] + "==")[1:])), "its 'x' is 31 bytes, not 32"),
    ("a point off the curve", off_the_curve, "its point (x, y) is not on curve P-256"),
]


@pytest.mark.parametrize(("case", "make", "said"), UNUSABLE_EC, ids=[c[0] for c in UNUSABLE_EC])
def test_unusable_ec_keys(clock: Clock, case: str, make: Any, said: str) -> None:
    signer = Signer("ES256")
    refused = refusal(signer.token(), key_set(clock, entries=[make(signer)]))
    assert (refused.kind, said in refused.message) == ("unauthenticated", True), refused.message


# -- what checking a token loads -----------------------------------------------------------------------------------

CHILD = """
import json, sys
from metadata_proxy import _sa_tokens, wire
sent = json.load(sys.stdin)
held = _sa_tokens.KeySet(300)
held.replace(wire.ServiceAccountKeys(issuer=sent["issuer"], keys=[sent["jwk"]]))
claims = _sa_tokens.verify(sent["token"], held, sent["audience"], 30)
print(json.dumps({"module": _sa_tokens.__file__, "pod": claims.pod,
                  "loaded": sorted(name for name in ("jwt", "cryptography") if name in sys.modules)}))
"""


@pytest.mark.parametrize(("algorithm", "loaded"), [("RS256", []), ("ES256", ["cryptography"])])
def test_what_checking_a_token_imports(signer: Signer, algorithm: str, loaded: list[str]) -> None:
    """An RSA-signed token is checked with the standard library only; an EC-signed one loads cryptography (which
    shows the probe sees an import when there is one)."""
    chosen = signer if algorithm == "RS256" else Signer(algorithm)
    sent = {"issuer": ISSUER, "audience": AUDIENCE, "jwk": chosen.jwk, "token": chosen.token()}
    result = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(sent), capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout)
    assert Path(said["module"]).resolve() == REPO / "metadata_proxy" / "_sa_tokens.py"
    assert (said["pod"], said["loaded"]) == ("team/app", loaded)
