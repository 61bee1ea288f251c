"""Pods granted a role on a node before they have an IP: announced to its proxy (pending), then replaced by their entry."""

from __future__ import annotations

import datetime
import json
import types
from typing import Any

import pydantic
import pytest

from metadata_proxy import wire
from podiam_operator._core import facts, world
from podiam_operator._engine import supply
from podiam_operator._kits import push
from tests.unit.operator.conftest import pod

pytestmark = pytest.mark.unit


class Proxy:
    """The proxy's side of the wire: what was sent, and the status it reports."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.status = wire.ProxyStatus(node_name="n1", ready=True, snapshot_generation=None, roles=0, pods=0)

    async def request(self, method: str, url: str, body: bytes | None, kind: str, *, node: str = "") -> bytes:
        self.requests.append((method, json.loads(body) if body else None))
        if method == "GET":
            return self.status.model_dump_json().encode()
        return wire.Ack(applied=1).model_dump_json().encode()


class Node:
    """The operator's wishes for node n1: entries (pods with an IP), keys and pending pods."""

    def __init__(self) -> None:
        self.pods: dict[str, world.PodEntryPlan] = {}
        self.pending: dict[str, wire.PendingPod] = {}

    def desired(self, node: str) -> world.NodeDesired:
        keys = {p.key for p in self.pods.values() if p.key} | {p.role_key for p in self.pending.values()}
        return world.NodeDesired(pods=dict(self.pods), keys=frozenset(keys))

    def pending_of(self, node: str) -> dict[str, wire.PendingPod]:
        return dict(self.pending)


def credentials(key: str) -> wire.RoleCredentials:
    now = datetime.datetime.now(datetime.timezone.utc)
    return wire.RoleCredentials(key=key, role_arn=f"arn:aws:iam::123456789012:role/{key}", role_name=key,
                                access_key_id="ASIA" + key.upper().ljust(16, "X"), secret_access_key=pydantic.SecretStr("s"),
                                session_token=pydantic.SecretStr("t"), expiration=now + datetime.timedelta(hours=1),
                                last_updated=now)


async def synced(node: str) -> None:
    pass


def worker() -> tuple[Node, Proxy, push.NodeWorker]:
    node, proxy = Node(), Proxy()
    made = push.NodeWorker("n1", proxy, node.desired, credentials, synced, port=8182, anti_entropy=3600,  # type: ignore[arg-type]
                           pending=node.pending_of)
    made.set_proxy(facts.ProxyFacts("n1", "p", "u", "127.0.0.10", True, False, 0))
    return node, proxy, made


async def step(made: push.NodeWorker) -> Any:
    await (made._snapshot() if made.need_snapshot else made._changes())
    return made.client.requests[-1][1]  # type: ignore[attr-defined]


async def test_announced_with_its_role_then_replaced_by_its_entry() -> None:
    node, proxy, made = worker()
    await step(made)
    node.pending["uid-a"] = wire.PendingPod(uid="uid-a", namespace="team", name="a", role_key="RoleA")
    body = await step(made)
    assert [r["key"] for r in body["upsert_roles"]] == ["RoleA"]
    assert body["upsert_pending"] == [{"uid": "uid-a", "namespace": "team", "name": "a", "role_key": "RoleA"}]
    # The API server shows its IP: one push adds the entry and withdraws the announcement.
    del node.pending["uid-a"]
    node.pods["uid-a"] = world.PodEntryPlan("10.0.0.7", "uid-a", "team", "a", "RoleA")
    body = await step(made)
    assert [p["uid"] for p in body["upsert_pods"]] == ["uid-a"] and body["remove_pending"] == ["uid-a"]
    assert "upsert_pending" not in body
    requests = len(proxy.requests)
    await step(made)
    assert len(proxy.requests) == requests  # nothing left to say


async def test_withdrawn_when_revoked_before_its_ip_and_in_every_snapshot() -> None:
    node, proxy, made = worker()
    node.pending["uid-a"] = wire.PendingPod(uid="uid-a", namespace="team", name="a", role_key="RoleA")
    body = await step(made)
    assert body["pending"] == [{"uid": "uid-a", "namespace": "team", "name": "a", "role_key": "RoleA"}]
    del node.pending["uid-a"]
    body = await step(made)
    assert body["remove_pending"] == ["uid-a"] and body["remove_roles"] == ["RoleA"]


async def test_a_proxy_holding_other_announcements_gets_a_snapshot() -> None:
    node, proxy, made = worker()
    node.pending["uid-a"] = wire.PendingPod(uid="uid-a", namespace="team", name="a", role_key="RoleA")
    await step(made)
    proxy.status = wire.ProxyStatus(node_name="n1", ready=True, snapshot_generation=made.generation, roles=1, pods=0, pending=1)
    await made._check()
    assert not made.need_snapshot
    proxy.status = wire.ProxyStatus(node_name="n1", ready=True, snapshot_generation=made.generation, roles=1, pods=0, pending=0)
    await made._check()
    assert made.need_snapshot


def test_which_pods_are_pending() -> None:
    """Granted on the node (the world's node_pods), no IP yet, not on the host network, not the operator's own."""
    starting = pod(name="starting", node="n1", ip=None, role="RoleA")
    with_ip = pod(name="with-ip", node="n1", ip="10.0.0.7", role="RoleA")
    host = pod(name="host", node="n1", ip=None, role="RoleA", host_network=True)
    own = pod(name="own", node="n1", ip=None)
    grants = {p.key: types.SimpleNamespace(key="RoleA") for p in (starting, with_ip, host, own)}
    stand_in = types.SimpleNamespace(node_pods={"n1": grants}, pods={p.key: p for p in (starting, with_ip, host, own)},
                                     own_pods={"n1": {own.key}})
    views = supply.NodeViews(stand_in, cache=None)  # type: ignore[arg-type]
    assert views.pending("n1") == {
        starting.uid: wire.PendingPod(uid=starting.uid, namespace=starting.namespace, name="starting", role_key="RoleA")}
    assert views.pending("n2") == {}
