"""The metadata port, endpoint by endpoint, with aiohttp's test client (the caller is 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from metadata_proxy import _metrics, _store, wire
from localcluster.proxy import pod_entry, role_credentials
from tests.unit.proxy.conftest import POD_IP, Clock, ImdsFactory

pytestmark = pytest.mark.unit

CREDS = "/latest/meta-data/iam/security-credentials/"
SEEN = web.AppKey("seen", list[str])
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}


@pytest.fixture
def served(store: _store.Store) -> wire.RoleCredentials:
    """127.0.0.1 is a pod with role MyRole."""
    role = role_credentials("k1", "MyRole", secret_access_key="s3cr3t-value", session_token="t0k3n-value")
    store.apply_snapshot(wire.Snapshot(generation=1, roles=[role], pods=[pod_entry(POD_IP, "k1", namespace="team", name="app")]))
    return role


def sample(metrics: _metrics.Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- IMDSv2 tokens ---------------------------------------------------------

async def test_token_then_credentials(imds: ImdsFactory, served: wire.RoleCredentials) -> None:
    client = await imds()
    response = await client.put("/latest/api/token", headers=TTL)
    assert response.status == 200 and response.content_type == "text/plain"
    assert response.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    token = await response.text()
    response = await client.get(CREDS, headers={"X-aws-ec2-metadata-token": token})
    assert response.status == 200 and await response.text() == "MyRole"


@pytest.mark.parametrize("headers", [{}, {"X-aws-ec2-metadata-token-ttl-seconds": "0"},
                                     {"X-aws-ec2-metadata-token-ttl-seconds": "21601"},
                                     {"X-aws-ec2-metadata-token-ttl-seconds": "soon"}])
async def test_token_needs_a_valid_ttl(imds: ImdsFactory, headers: dict[str, str]) -> None:
    response = await (await imds()).put("/latest/api/token", headers=headers)
    assert response.status == 400
    assert "X-aws-ec2-metadata-token-ttl-seconds" in await response.text()


async def test_forwarded_requests_are_refused(imds: ImdsFactory, served: wire.RoleCredentials) -> None:
    client = await imds()
    assert (await client.put("/latest/api/token", headers=TTL | {"X-Forwarded-For": "10.1.1.1"})).status == 403
    assert (await client.get(CREDS + "MyRole", headers={"X-Forwarded-For": "10.1.1.1"})).status == 403


async def test_token_only_by_put(imds: ImdsFactory) -> None:
    response = await (await imds()).get("/latest/api/token", headers=TTL)
    assert response.status == 405 and response.headers["Allow"] == "PUT"


async def test_invalid_and_expired_tokens_get_401(imds: ImdsFactory, served: wire.RoleCredentials, clock: Clock, metrics: _metrics.Metrics) -> None:
    client = await imds()
    assert (await client.get(CREDS, headers={"X-aws-ec2-metadata-token": "1.forged"})).status == 401
    token = await (await client.put("/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "5"})).text()
    assert (await client.get(CREDS, headers={"X-aws-ec2-metadata-token": token})).status == 200
    clock.now += 6
    assert (await client.get(CREDS, headers={"X-aws-ec2-metadata-token": token})).status == 401
    assert sample(metrics, "podiam_proxy_imdsv2_token_failures_total", reason="expired") == 1
    assert sample(metrics, "podiam_proxy_imdsv2_token_failures_total", reason="invalid") == 1


async def test_a_token_from_another_ip_is_refused(imds: ImdsFactory, served: wire.RoleCredentials, store: _store.Store) -> None:
    store.apply_changes(wire.Changes(upsert_pods=[pod_entry("127.0.0.7", "k1")]))
    other = await imds(source_ip="127.0.0.7")
    token = await (await other.put("/latest/api/token", headers=TTL)).text()
    assert (await other.get(CREDS, headers={"X-aws-ec2-metadata-token": token})).status == 200
    pod = await imds()  # another app, the same proxy key: only the IP differs
    assert (await pod.get(CREDS, headers={"X-aws-ec2-metadata-token": token})).status == 401


async def test_imdsv1_allowed_by_default(imds: ImdsFactory, served: wire.RoleCredentials) -> None:
    assert (await (await imds()).get(CREDS)).status == 200


async def test_require_imdsv2(imds: ImdsFactory, served: wire.RoleCredentials, metrics: _metrics.Metrics) -> None:
    client = await imds(require_imdsv2=True)
    assert (await client.get(CREDS)).status == 401
    assert sample(metrics, "podiam_proxy_imdsv2_token_failures_total", reason="missing") == 1
    token = await (await client.put("/latest/api/token", headers=TTL)).text()
    assert (await client.get(CREDS, headers={"X-aws-ec2-metadata-token": token})).status == 200


async def test_disable_imdsv2_answers_404_so_sdks_fall_back(imds: ImdsFactory, served: wire.RoleCredentials) -> None:
    client = await imds(disable_imdsv2=True)
    assert (await client.put("/latest/api/token", headers=TTL)).status == 404
    assert (await client.get(CREDS + "MyRole")).status == 200


# -- credentials -----------------------------------------------------------

async def test_credentials_document(imds: ImdsFactory, served: wire.RoleCredentials, metrics: _metrics.Metrics) -> None:
    response = await (await imds()).get(CREDS + "MyRole")
    assert response.status == 200 and response.content_type == "text/plain"
    document = json.loads(await response.text())
    assert document["AccessKeyId"] == served.access_key_id
    assert document["SecretAccessKey"] == "s3cr3t-value" and document["Token"] == "t0k3n-value"
    assert document["Expiration"] == served.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert sample(metrics, "podiam_proxy_credential_lookups_total", result="hit") == 1
    assert sample(metrics, "podiam_proxy_metadata_requests_total", route="credentials", status="200") == 1
    assert sample(metrics, "podiam_proxy_metadata_handler_seconds_count", route="credentials") == 1


async def test_without_trailing_slash_redirects_like_imds(imds: ImdsFactory, served: wire.RoleCredentials) -> None:
    response = await (await imds()).get(CREDS.rstrip("/"), allow_redirects=False)
    assert response.status == 301 and response.headers["Location"] == CREDS


async def test_another_role_name_is_404(imds: ImdsFactory, served: wire.RoleCredentials, metrics: _metrics.Metrics) -> None:
    client = await imds()
    for path in ("OtherRole", "myrole", "MyRole/", "MyRole/x", "%4DyRole%2F"):
        response = await client.get(CREDS + path)
        assert response.status == 404, path
        assert "s3cr3t" not in await response.text()
    assert (await client.get(CREDS + "%4DyRole")).status == 200  # percent-decoding is fine
    assert sample(metrics, "podiam_proxy_credential_lookups_total", result="wrong_role") == 5


async def test_info(imds: ImdsFactory, served: wire.RoleCredentials) -> None:
    response = await (await imds()).get("/latest/meta-data/iam/info")
    info = json.loads(await response.text())
    assert info["Code"] == "Success"
    assert info["InstanceProfileArn"] == "arn:aws:iam::123456789012:instance-profile/MyRole"


async def test_another_pods_ip_gets_only_its_own_role(imds: ImdsFactory, served: wire.RoleCredentials, store: _store.Store) -> None:
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k2", "Other")], upsert_pods=[pod_entry("127.0.0.8", "k2")]))
    other = await imds(source_ip="127.0.0.8")
    assert await (await other.get(CREDS)).text() == "Other"
    assert (await other.get(CREDS + "MyRole")).status == 404
    stranger = await imds(source_ip="127.0.0.9")
    response = await stranger.get(CREDS + "MyRole")
    assert response.status == 404 and "no pod known at 127.0.0.9" in await response.text()


async def test_unknown_ip_fails_at_once_without_wait(imds: ImdsFactory) -> None:
    client = await imds()
    started = time.monotonic()
    assert (await client.get(CREDS)).status == 404
    assert time.monotonic() - started < 0.2


async def test_unknown_ip_waits_then_404(imds: ImdsFactory, metrics: _metrics.Metrics) -> None:
    client = await imds(credential_wait="300ms")
    started = time.monotonic()
    for path in (CREDS, CREDS + "MyRole", "/latest/meta-data/iam/info"):
        assert (await client.get(path)).status == 404
    assert 0.9 <= time.monotonic() - started < 2.0
    assert sample(metrics, "podiam_proxy_credential_waits_total") == 3
    assert sample(metrics, "podiam_proxy_credential_lookups_total", result="miss") == 3


async def test_a_request_waits_for_the_pod_entry_on_its_way(imds: ImdsFactory, store: _store.Store, metrics: _metrics.Metrics) -> None:
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "MyRole")]))  # sent before the pod had an IP
    client = await imds(credential_wait=0.8)
    asyncio.get_running_loop().call_later(
        0.2, store.apply_changes, wire.Changes(upsert_pods=[pod_entry(POD_IP, "k1")]),
    )
    started = time.monotonic()
    response = await client.get(CREDS)
    assert response.status == 200 and await response.text() == "MyRole"
    assert 0.15 <= time.monotonic() - started < 0.7
    assert sample(metrics, "podiam_proxy_credential_lookups_total", result="waited_hit") == 1


async def test_credentials_inside_the_margin_are_never_served(imds: ImdsFactory, served: wire.RoleCredentials, clock: Clock) -> None:
    client = await imds()
    assert (await client.get(CREDS + "MyRole")).status == 200
    clock.now = served.expiration.timestamp() - 299
    response = await client.get(CREDS + "MyRole")
    assert response.status == 404 and "no credentials for pod team/app" in await response.text()
    clock.now = served.expiration.timestamp() + 1
    assert (await client.get(CREDS)).status == 404


async def test_revocation_is_immediate(imds: ImdsFactory, served: wire.RoleCredentials, store: _store.Store) -> None:
    client = await imds()
    assert (await client.get(CREDS + "MyRole")).status == 200
    uid = store.pod(POD_IP).uid  # type: ignore[union-attr]
    store.apply_changes(wire.Changes(remove_pods=[wire.PodRemoval(ip=POD_IP, uid=uid)]))
    assert (await client.get(CREDS + "MyRole")).status == 404


async def test_only_get_on_metadata(imds: ImdsFactory, served: wire.RoleCredentials) -> None:
    client = await imds()
    assert (await client.post(CREDS + "MyRole", data=b"x")).status == 405
    assert (await client.delete(CREDS)).status == 405


async def test_oversized_requests_are_refused(imds: ImdsFactory) -> None:
    client = await imds()
    response = await client.get(CREDS, headers={"X-Big": "a" * 20000})
    assert response.status in (400, 431)


# -- everything else: the allow-list and the real IMDS -----------------------

@pytest.fixture
async def real_imds(aiohttp_server: Any) -> TestServer:
    """Plays the node's metadata service, IMDSv2 required, with things pods must never see."""
    seen: list[str] = []

    async def token(request: web.Request) -> web.Response:
        return web.Response(text="node-token")

    async def get(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.headers.get("X-aws-ec2-metadata-token") != "node-token":
            return web.Response(status=401)
        data = {
            "/latest/meta-data/placement/availability-zone": "eu-west-1a",
            "/latest/meta-data/placement/region": "eu-west-1",
            "/latest/meta-data/iam/security-credentials/": "node-role",
            "/latest/meta-data/iam/security-credentials/node-role": '{"SecretAccessKey": "NODE-SECRET"}',
            "/latest/meta-data/iam/info": '{"InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/node"}',
            "/latest/user-data": "#!/bin/sh NODE-SECRET",
        }
        if request.path not in data:
            return web.Response(status=404)
        return web.Response(text=data[request.path])

    app = web.Application()
    app[SEEN] = seen
    app.router.add_put("/latest/api/token", token)
    app.router.add_get("/{tail:.*}", get)
    return await aiohttp_server(app)  # type: ignore[no-any-return]


async def test_allowed_routes_are_proxied_with_the_proxys_own_token(imds: ImdsFactory, real_imds: TestServer, metrics: _metrics.Metrics) -> None:
    client = await imds(upstream=str(real_imds.make_url("")))
    response = await client.get("/latest/meta-data/placement/availability-zone")
    assert response.status == 200 and await response.text() == "eu-west-1a"
    assert await (await client.get("/latest/meta-data/placement/region")).text() == "eu-west-1"
    assert sample(metrics, "podiam_proxy_upstream_requests_total", status="200") == 2


@pytest.mark.parametrize("path", [
    "/latest/user-data", "/latest/meta-data/iam/security-credentials/../../user-data",
    "/latest/meta-data/placement/availability-zone?x=1", "/latest/meta-data/placement//availability-zone",
    "/latest/meta-data/placement%2Favailability-zone", "/latest/dynamic/instance-identity/document", "/", "/latest/meta-data/",
])
async def test_everything_else_is_404_and_never_reaches_the_real_imds(imds: ImdsFactory, real_imds: TestServer, path: str) -> None:
    client = await imds(upstream=str(real_imds.make_url("")))
    response = await client.get(path)
    assert response.status == 404
    assert "NODE-SECRET" not in await response.text()
    assert real_imds.app[SEEN] == []


async def test_allow_route_setting_replaces_the_defaults(imds: ImdsFactory, real_imds: TestServer) -> None:
    client = await imds(upstream=str(real_imds.make_url("")), allow_route=["/latest/user-data"])
    assert (await client.get("/latest/user-data")).status == 200
    assert (await client.get("/latest/meta-data/placement/region")).status == 404


async def test_node_credentials_stay_unreachable_even_through_iam_paths(imds: ImdsFactory, real_imds: TestServer, served: wire.RoleCredentials) -> None:
    client = await imds(upstream=str(real_imds.make_url("")), allow_route=[".*"])
    response = await client.get(CREDS + "node-role")
    assert response.status == 404  # iam/ is always answered from the store
    assert real_imds.app[SEEN] == []


async def test_upstream_down_is_502(imds: ImdsFactory) -> None:
    client = await imds(upstream="http://127.0.0.1:9", upstream_timeout=1)
    response = await client.get("/latest/meta-data/placement/region")
    assert response.status == 502


async def test_upstream_404_passes_through(imds: ImdsFactory, real_imds: TestServer) -> None:
    client = await imds(upstream=str(real_imds.make_url("")), allow_route=["/latest/meta-data/nothing-here"])
    assert (await client.get("/latest/meta-data/nothing-here")).status == 404
    assert real_imds.app[SEEN] == ["/latest/meta-data/nothing-here"]


async def test_ipv4_pods_on_a_dual_stack_listener_are_known_by_their_ipv4(store: _store.Store, served: wire.RoleCredentials) -> None:
    from metadata_proxy import _imds

    assert _imds._ipv6_caller("::ffff:127.0.0.1") == POD_IP
    assert _imds._ipv6_caller("fd00:0:0::1") == "fd00::1"


# -- the operator's own pods: the node's identity, forwarded ---------------------

def node_identity_entry(ip: str, name: str = "podiam-operator-7d9") -> wire.PodEntry:
    return wire.PodEntry(ip=ip, uid="op-uid-1", namespace="podiam-system", name=name, node_identity=True)


@pytest.fixture
def operator_pod(store: _store.Store) -> wire.PodEntry:
    """127.0.0.1 is one of the operator's pods; 127.0.0.2 a pod with role MyRole."""
    entry = node_identity_entry(POD_IP)
    role = role_credentials("k1", "MyRole")
    store.apply_snapshot(wire.Snapshot(generation=1, roles=[role], pods=[entry, pod_entry("127.0.0.2", "k1")]))
    return entry


async def test_a_node_identity_pod_reads_the_nodes_role_through_the_proxy(
    imds: ImdsFactory, real_imds: TestServer, operator_pod: wire.PodEntry, metrics: _metrics.Metrics,
) -> None:
    client = await imds(upstream=str(real_imds.make_url("")))
    token = await (await client.put("/latest/api/token", headers=TTL)).text()  # the proxy's own token for the pod
    headers = {"X-aws-ec2-metadata-token": token}
    listing = await client.get(CREDS, headers=headers)
    assert listing.status == 200 and await listing.text() == "node-role"
    document = await client.get(CREDS + "node-role", headers=headers)
    assert document.status == 200 and "NODE-SECRET" in await document.text()
    info = await client.get("/latest/meta-data/iam/info", headers=headers)
    assert info.status == 200 and "instance-profile/node" in await info.text()
    # Upstream with the proxy's own token, never the pod's.
    assert real_imds.app[SEEN] == [CREDS, CREDS + "node-role", "/latest/meta-data/iam/info"]
    assert sample(metrics, "podiam_proxy_credential_lookups_total", result="node_identity") == 3


@pytest.mark.parametrize("path", [
    "/latest/user-data", "/latest/meta-data/", "/latest/dynamic/instance-identity/document",
    CREDS + "../../../user-data", CREDS + "node-role?x=1", CREDS + "a/b", CREDS + "..", CREDS + "node%2Frole",
])
async def test_a_node_identity_pod_gets_nothing_else_of_the_node(
    imds: ImdsFactory, real_imds: TestServer, operator_pod: wire.PodEntry, path: str,
) -> None:
    client = await imds(upstream=str(real_imds.make_url("")))
    response = await client.get(path)
    assert response.status == 404
    assert real_imds.app[SEEN] == []


async def test_other_pods_never_get_the_node_identity(imds: ImdsFactory, real_imds: TestServer, operator_pod: wire.PodEntry) -> None:
    other = await imds(source_ip="127.0.0.2", upstream=str(real_imds.make_url("")))
    assert await (await other.get(CREDS)).text() == "MyRole"
    assert (await other.get(CREDS + "node-role")).status == 404
    stranger = await imds(source_ip="127.0.0.3", upstream=str(real_imds.make_url("")))
    assert (await stranger.get(CREDS)).status == 404
    assert real_imds.app[SEEN] == []


async def test_a_revoked_node_identity_entry_answers_404_at_once(
    imds: ImdsFactory, real_imds: TestServer, operator_pod: wire.PodEntry, store: _store.Store,
) -> None:
    client = await imds(upstream=str(real_imds.make_url("")))
    assert (await client.get(CREDS)).status == 200
    store.apply_changes(wire.Changes(remove_pods=[wire.PodRemoval(ip=operator_pod.ip, uid=operator_pod.uid)]))
    assert (await client.get(CREDS)).status == 404
    assert real_imds.app[SEEN] == [CREDS]


async def test_node_identity_with_the_node_service_down_is_502(imds: ImdsFactory, operator_pod: wire.PodEntry) -> None:
    client = await imds(upstream="http://127.0.0.1:9", upstream_timeout=1)
    response = await client.get(CREDS)
    assert response.status == 502 and "node's metadata service" in await response.text()
