"""The container-credentials endpoint: tokens signed here with generated keys, every refusal and its status.

The keys are pushed as the operator pushes the API server's JWKS; the tokens
carry the claims kube-apiserver writes into a pod's projected token.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from metadata_proxy import _container_credentials, _metrics, _ratelog, _store, wire
from localcluster.proxy import pod_entry, role_credentials
from tests.unit.proxy.conftest import AUDIENCE, ISSUER, Clock, Signer, forged_hs256, keys, unsigned

pytestmark = pytest.mark.unit

PATH = "/v1/credentials"
KEYS = ("AccessKeyId", "SecretAccessKey", "Token", "AccountId", "Expiration")


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def store(clock: Clock, metrics: _metrics.Metrics) -> _store.Store:
    return _store.Store(expiry_margin=300, clock=clock, key_overlap=300)


@pytest.fixture
async def client(aiohttp_client: Any, store: _store.Store, metrics: _metrics.Metrics) -> TestClient[web.Request, web.Application]:
    app = _container_credentials.make_app(store, metrics, _ratelog.PerSource(60, metrics), audience=AUDIENCE, leeway=5, wait=0)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def bound(store: _store.Store, signer: Signer, **snapshot: Any) -> wire.RoleCredentials:
    role = role_credentials("k1", "PodRole", account="111122223333")
    fields: dict[str, Any] = {"roles": [role], "pods": [pod_entry("10.0.0.5", "k1", uid="uid-1", namespace="team", name="app")],
                              "service_account_keys": keys(signer)}
    store.apply_snapshot(wire.Snapshot(generation=1, **(fields | snapshot)))
    return role


async def ask(client: TestClient[web.Request, web.Application], token: str | None, **headers: str) -> tuple[int, dict[str, Any]]:
    sent = dict(headers) | ({"Authorization": token} if token is not None else {})
    response = await client.get(PATH, headers=sent)
    return response.status, await response.json()


# -- served ------------------------------------------------------------------------------------------------


async def test_a_bound_pod_gets_exactly_what_the_sdks_read(client: TestClient[web.Request, web.Application], store: _store.Store,
                                                           signer: Signer) -> None:
    role = bound(store, signer)
    status, body = await ask(client, signer.token())
    assert status == 200
    assert tuple(body) == KEYS
    assert body["AccessKeyId"] == role.access_key_id
    assert body["SecretAccessKey"] == role.secret_access_key.get_secret_value()
    assert body["Token"] == role.session_token.get_secret_value()
    assert body["AccountId"] == "111122223333"
    assert body["Expiration"] == role.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("kind", ["pending", "token_only"])
async def test_pods_without_an_entry_by_ip_are_served_by_uid(client: TestClient[web.Request, web.Application],
                                                             store: _store.Store, signer: Signer, kind: str) -> None:
    # A starting pod whose IP the API server does not show yet, and a hostNetwork pod (the node's IP).
    held: dict[str, Any] = {"pods": []}
    if kind == "pending":
        held["pending"] = [wire.PendingPod(uid="uid-1", namespace="team", name="app", role_key="k1")]
    else:
        held["token_only"] = [wire.TokenOnlyPod(uid="uid-1", namespace="team", name="app", role_key="k1")]
    role = bound(store, signer, **held)
    status, body = await ask(client, signer.token())
    assert status == 200 and body["AccessKeyId"] == role.access_key_id


async def test_rsa_keys_and_a_bearer_prefix(client: TestClient[web.Request, web.Application], store: _store.Store) -> None:
    signer = Signer("RS256")
    bound(store, signer)
    assert (await ask(client, "Bearer " + signer.token()))[0] == 200


# -- refused, with the status the SDKs and the user see ---------------------------------------------------------


REFUSALS: list[tuple[str, Any, int, str]] = [
    ("no Authorization header", lambda s: None, 400, "no Authorization header"),
    ("not a JWT", lambda s: "not-a-token", 400, "not a JSON Web Token"),
    ("alg none", unsigned, 401, "algorithm 'none' is not accepted"),
    ("HS256 with the public key", forged_hs256, 401, "algorithm 'HS256' is not accepted"),
    ("unknown key id", lambda s: Signer().token(), 401, "which is not one of the API server's service-account keys"),
    ("forged: another key under a known kid", lambda s: Signer(kid=s.kid).token(), 401, "signature does not verify"),
    ("wrong issuer", lambda s: s.token(iss="https://elsewhere.example"), 401, "issuer is not"),
    ("wrong audience", lambda s: s.token(aud=["sts.amazonaws.com"]), 401, "audience does not include 'pods.eks.amazonaws.com'"),
    ("expired", lambda s: s.token(exp=int(time.time()) - 60), 401, "expired"),
    ("not yet valid", lambda s: s.token(nbf=int(time.time()) + 120), 401, "not valid yet"),
    ("subject of another ServiceAccount", lambda s: s.token(sub="system:serviceaccount:team:admin"), 401, "does not match"),
    ("no kubernetes.io claims", lambda s: s.token(**{"kubernetes.io": {}}), 401, "no kubernetes.io namespace"),
    ("not bound to a pod", lambda s: s.token(pod=None), 403, "is not bound to a pod"),
    ("another node's pod", lambda s: s.token(("team", "elsewhere", "uid-9")), 403, "has no role on this node"),
    ("uid changed (deleted, recreated)", lambda s: s.token(("team", "app", "uid-old")), 403, "is now uid uid-1"),
]


@pytest.mark.parametrize(("case", "make", "status", "said"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refusals(client: TestClient[web.Request, web.Application], store: _store.Store, signer: Signer,
                        case: str, make: Any, status: int, said: str) -> None:
    role = bound(store, signer)
    got, body = await ask(client, make(signer))
    assert (got, said in body["message"]) == (status, True), body
    assert set(body) == {"code", "message"}
    text = json.dumps(body)
    assert role.access_key_id not in text and role.secret_access_key.get_secret_value() not in text


async def test_a_pod_without_a_role_and_the_operators_own_pods_are_refused(
    client: TestClient[web.Request, web.Application], store: _store.Store, signer: Signer,
) -> None:
    own = wire.PodEntry(ip="10.0.0.6", uid="uid-op", namespace="podiam-system", name="operator", node_identity=True)
    bound(store, signer, pods=[own])
    assert (await ask(client, signer.token(("team", "app", "uid-1"))))[0] == 403  # not pushed: not bound
    status, body = await ask(client, signer.token(("podiam-system", "operator", "uid-op")))
    assert status == 403 and "the node's own identity" in body["message"]


async def test_credentials_inside_the_expiry_margin_are_never_served(
    client: TestClient[web.Request, web.Application], store: _store.Store, signer: Signer, clock: Clock,
) -> None:
    bound(store, signer)
    clock.now += 3600 - 200  # 200 s left, inside the 300 s margin
    status, body = await ask(client, signer.token())
    assert status == 503 and body["code"] == "CredentialsUnavailable"


async def test_no_keys_yet(client: TestClient[web.Request, web.Application], store: _store.Store, signer: Signer) -> None:
    bound(store, signer, service_account_keys=None)
    status, body = await ask(client, signer.token())
    assert status == 503 and "no service-account keys" in body["message"]


async def test_other_paths_and_methods(client: TestClient[web.Request, web.Application]) -> None:
    assert (await client.get("/latest/meta-data/")).status == 404
    response = await client.post(PATH, data=b"")
    assert response.status == 405 and response.headers["Allow"] == "GET"


# -- keys: rotation, unusable keys, what a push without keys means ------------------------------------------------------


async def test_rotation_keeps_a_retired_key_for_the_overlap_only(
    client: TestClient[web.Request, web.Application], store: _store.Store, signer: Signer, clock: Clock,
) -> None:
    bound(store, signer)
    old_token = signer.token()
    new = Signer()
    store.apply_changes(wire.Changes(service_account_keys=keys(new)))  # the API server signs with a new key only
    assert (await ask(client, new.token()))[0] == 200
    assert (await ask(client, old_token))[0] == 200  # within the overlap
    clock.now += 301
    status, body = await ask(client, old_token)
    assert status == 401 and "not one of the API server's service-account keys" in body["message"]
    # Taken back (both keys published again): accepted again.
    store.apply_changes(wire.Changes(service_account_keys=keys(new, signer)))
    assert (await ask(client, old_token))[0] == 200


async def test_symmetric_and_private_keys_in_a_jwks_are_never_used(
    client: TestClient[web.Request, web.Application], store: _store.Store, signer: Signer,
) -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    oct_key = {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode(), "alg": "HS256"}
    private = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signer.key)), "kid": "private", "alg": "ES256"}
    bound(store, signer, service_account_keys=wire.ServiceAccountKeys(issuer=ISSUER, keys=[signer.jwk, oct_key, private]))
    assert store.keys.kids() == [signer.kid]
    hmac_token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}, secret, algorithm="HS256",
                            headers={"kid": "hmac"})
    assert (await ask(client, hmac_token))[0] == 401


def test_a_push_without_keys_keeps_those_held(store: _store.Store, signer: Signer) -> None:
    bound(store, signer)
    fingerprint = store.status("n").service_account_keys
    assert fingerprint == keys(signer).fingerprint()
    store.apply_snapshot(wire.Snapshot(generation=2, roles=[role_credentials("k1")]))
    store.apply_changes(wire.Changes())
    assert store.keys.kids() == [signer.kid] and store.status("n").service_account_keys == fingerprint


# -- the store and the wire ------------------------------------------------------------------------------------------


def test_token_only_pods_in_changes_and_snapshots(store: _store.Store) -> None:
    store.apply_snapshot(wire.Snapshot(generation=1, roles=[role_credentials("k1")]))
    host = wire.TokenOnlyPod(uid="u-host", namespace="team", name="agent", role_key="k1")
    unknown = wire.TokenOnlyPod(uid="u-x", namespace="team", name="x", role_key="nope")
    ack = store.apply_changes(wire.Changes(upsert_token_only=[host, unknown]))
    assert [r.uid for r in ack.rejected] == ["u-x"] and store.token_only_count == 1
    assert store.by_uid("u-host")[1] is not None
    assert store.pod(wire.PodEntry(ip="10.0.0.1", uid="u", namespace="n", name="n", role_key="k1").ip) is None  # never by IP
    store.apply_changes(wire.Changes(remove_token_only=["u-host"]))
    assert store.by_uid("u-host") == (None, None)
    ack = store.apply_snapshot(wire.Snapshot(generation=2, roles=[role_credentials("k1")], token_only=[host, unknown]))
    assert [r.uid for r in ack.rejected] == ["u-x"] and store.status("n").token_only == 1


def test_new_fields_stay_out_of_bodies_while_empty() -> None:
    # A proxy that predates them (extra="forbid") still reads every body that does not use them.
    assert set(json.loads(wire.encode(wire.Changes()))) == {"upsert_roles", "remove_roles", "upsert_pods", "remove_pods"}
    assert set(json.loads(wire.encode(wire.Snapshot(generation=1)))) == {"generation", "roles", "pods"}
    status = wire.ProxyStatus(node_name="n", ready=True, snapshot_generation=1, roles=0, pods=0)
    assert set(json.loads(status.model_dump_json())) == {"node_name", "ready", "snapshot_generation", "roles", "pods"}
