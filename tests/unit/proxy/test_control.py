"""The push API over real mutual TLS (aiohttp test server with the proxy's TLS context)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from metadata_proxy import _metrics, _store, wire
from localcluster import certs
from localcluster.proxy import client_tls_context, pod_entry, role_credentials
from tests.unit.proxy.conftest import control_url, operator_session, ssl_error_types

pytestmark = pytest.mark.unit


async def call(
    server: TestServer, pki: certs.Pki, method: str, path: str, body: bytes | None = None, client: certs.CertFiles | None = None,
) -> tuple[int, Any]:
    async with operator_session(pki, client) as session:
        async with session.request(
            method, control_url(server, path), data=body, server_hostname=wire.PROXY_SERVER_NAME,
            headers={"Content-Type": "application/json"},
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if response.content_type == "application/json" else text


async def test_snapshot_changes_status(control_server: TestServer, pki: certs.Pki, store: _store.Store) -> None:
    status, body = await call(control_server, pki, "GET", wire.STATUS_PATH)
    assert status == 200
    assert wire.ProxyStatus.model_validate(body) == wire.ProxyStatus(node_name="node-unit", ready=False, snapshot_generation=None, roles=0, pods=0)

    snapshot = wire.Snapshot(generation=3, roles=[role_credentials("k1", "r1")], pods=[pod_entry("10.0.0.1", "k1", uid="u1")])
    status, body = await call(control_server, pki, "PUT", wire.SNAPSHOT_PATH, wire.encode(snapshot))
    assert status == 200 and wire.Ack.model_validate(body) == wire.Ack(applied=2)
    assert store.ready and store.lookup("10.0.0.1")[1] is not None

    changes = wire.Changes(
        upsert_roles=[role_credentials("k2", "r2")],
        upsert_pods=[pod_entry("10.0.0.2", "k2"), pod_entry("10.0.0.1", "k2", uid="intruder")],
    )
    status, body = await call(control_server, pki, "POST", wire.CHANGES_PATH, wire.encode(changes))
    ack = wire.Ack.model_validate(body)
    assert status == 200 and ack.applied == 2
    assert [(r.ip, r.uid) for r in ack.rejected] == [("10.0.0.1", "intruder")]

    status, body = await call(control_server, pki, "GET", wire.STATUS_PATH)
    assert body == {"node_name": "node-unit", "ready": True, "snapshot_generation": 3, "roles": 2, "pods": 2}


async def test_the_secrets_cross_the_wire_and_are_served(control_server: TestServer, pki: certs.Pki, store: _store.Store) -> None:
    role = role_credentials("k1", "r1", secret_access_key="the-secret", session_token="the-token")
    await call(control_server, pki, "PUT", wire.SNAPSHOT_PATH, wire.encode(wire.Snapshot(generation=1, roles=[role], pods=[pod_entry("10.0.0.1", "k1")])))
    _, creds = store.lookup("10.0.0.1")
    assert creds is not None
    document = json.loads(creds.document)
    assert (document["SecretAccessKey"], document["Token"]) == ("the-secret", "the-token")


@pytest.mark.parametrize("body", [
    b"not json",
    b'{"generation": -1}',
    b'{"generation": 1, "unexpected": true}',
    b'{"generation": 1, "pods": [{"ip": "10.0.0.300", "uid": "u", "namespace": "n", "name": "p", "role_key": "k"}]}',
])
async def test_invalid_snapshots_are_422_and_change_nothing(control_server: TestServer, pki: certs.Pki, store: _store.Store, body: bytes) -> None:
    status, answer = await call(control_server, pki, "PUT", wire.SNAPSHOT_PATH, body)
    assert status == 422 and answer["error"] == "invalid snapshot" and answer["problems"]
    assert not store.ready


async def test_validation_errors_never_echo_secrets(control_server: TestServer, pki: certs.Pki, metrics: _metrics.Metrics) -> None:
    role = json.loads(wire.encode(wire.Changes(upsert_roles=[role_credentials("k1", "r1", secret_access_key="SUPER-SECRET-1")])))
    role["upsert_roles"][0]["expiration"] = "2030-01-01T00:00:00"  # naive timestamp: invalid
    status, answer = await call(control_server, pki, "POST", wire.CHANGES_PATH, json.dumps(role).encode())
    assert status == 422 and "SUPER-SECRET-1" not in json.dumps(answer)
    assert "timezone" in json.dumps(answer)
    assert metrics.registry.get_sample_value("podiam_proxy_pushes_total", {"kind": "changes", "outcome": "invalid"}) == 1


async def test_expiring_role_upsert_is_reported_in_the_ack(control_server: TestServer, pki: certs.Pki) -> None:
    changes = wire.Changes(upsert_roles=[role_credentials("k1", "r1", expires_in=60)])
    status, body = await call(control_server, pki, "POST", wire.CHANGES_PATH, wire.encode(changes))
    ack = wire.Ack.model_validate(body)
    assert status == 200 and ack.applied == 0 and ack.rejected[0].role_key == "k1"


async def test_oversized_push_is_413(control_server: TestServer, pki: certs.Pki) -> None:
    status, _ = await call(control_server, pki, "PUT", wire.SNAPSHOT_PATH, b" " * (17 * 1024 * 1024))
    assert status == 413


async def test_wrong_method_and_unknown_paths(control_server: TestServer, pki: certs.Pki) -> None:
    assert (await call(control_server, pki, "GET", wire.SNAPSHOT_PATH))[0] == 405
    assert (await call(control_server, pki, "GET", "/v2/status"))[0] == 404


async def test_a_certificate_naming_someone_else_is_403(control_server: TestServer, pki: certs.Pki, store: _store.Store, metrics: _metrics.Metrics) -> None:
    snapshot = wire.encode(wire.Snapshot(generation=1))
    status, body = await call(control_server, pki, "PUT", wire.SNAPSHOT_PATH, snapshot, client=pki.other_identity)
    assert status == 403 and "podiam-operator" in body["error"]
    assert not store.ready
    assert metrics.registry.get_sample_value("podiam_proxy_control_refused_total", {"reason": "wrong_identity"}) == 1


async def test_the_identity_in_the_cn_alone_is_accepted(control_server: TestServer, pki: certs.Pki) -> None:
    assert (await call(control_server, pki, "GET", wire.STATUS_PATH, client=pki.operator_cn_only))[0] == 200


@pytest.mark.parametrize("which", ["none", "foreign", "expired"])
async def test_refused_at_the_handshake(control_server: TestServer, pki: certs.Pki, store: _store.Store, which: str) -> None:
    client = {"none": None, "foreign": pki.foreign, "expired": pki.expired}[which]
    context = client_tls_context(pki.ca, client)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        with pytest.raises(ssl_error_types()):
            async with session.put(
                control_url(control_server, wire.SNAPSHOT_PATH), data=wire.encode(wire.Snapshot(generation=1)),
                server_hostname=wire.PROXY_SERVER_NAME,
            ) as response:
                await response.read()
    assert not store.ready


async def test_plain_http_on_the_control_port_gets_nothing(control_server: TestServer, store: _store.Store) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ssl_error_types()):
            async with session.get(f"http://{control_server.host}:{control_server.port}{wire.STATUS_PATH}") as response:
                await response.read()
