"""The node worker's bookkeeping with a fake transport: what goes out, when a snapshot replaces changes."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import prometheus_client
import pydantic
import pytest

from metadata_proxy import wire
from podiam_operator import _metrics
from podiam_operator._core import decide, facts, roles, world
from podiam_operator._kits import push
from tests.unit.operator.conftest import namespace, pod

pytestmark = pytest.mark.unit


class FakeClient:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.reject_next = False
        self.fail_next = False

    async def request(self, method: str, url: str, body: bytes | None, kind: str, *, node: str = "") -> bytes:
        decoded = json.loads(body) if body else None
        self.requests.append((method, url, decoded))
        if self.fail_next:
            self.fail_next = False
            raise push.PushFailed("connection refused")
        if method == "GET":
            return wire.ProxyStatus(node_name="n1", ready=True, snapshot_generation=None, roles=0, pods=0).model_dump_json().encode()
        rejected = []
        if self.reject_next and decoded.get("upsert_pods"):
            self.reject_next = False
            entry = decoded["upsert_pods"][0]
            rejected = [wire.Rejection(ip=entry["ip"], uid=entry["uid"], reason="ip held by another pod")]
        return wire.Ack(applied=1, rejected=rejected).model_dump_json().encode()


def credentials_for(w: world.World) -> Any:
    def get(key: str) -> wire.RoleCredentials | None:
        grant = w.grants.get(key)
        if grant is None:
            return None
        now = datetime.datetime.now(datetime.timezone.utc)
        return wire.RoleCredentials(
            key=key, role_arn=grant.role.arn, role_name=grant.role.name, access_key_id="ASIA" + key[-16:].upper(),
            secret_access_key=pydantic.SecretStr("s"), session_token=pydantic.SecretStr("t"),
            expiration=now + datetime.timedelta(hours=1), last_updated=now,
        )

    return get


def proxy(node: str = "n1", uid: str = "proxy-uid", restarts: int = 0) -> facts.ProxyFacts:
    return facts.ProxyFacts(node=node, pod_name="p", pod_uid=uid, host_ip="127.0.0.10", running=True, ready=False, restarts=restarts)


async def setup() -> tuple[world.World, FakeClient, push.NodeWorker, list[str]]:
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"))
    w.set_namespace(namespace("team", ".*"))
    client = FakeClient()
    synced: list[str] = []

    async def on_synced(node: str) -> None:
        synced.append(node)

    worker = push.NodeWorker("n1", client, w.desired_for_node, credentials_for(w), on_synced, port=8182, anti_entropy=3600)  # type: ignore[arg-type]
    worker.set_proxy(proxy())
    return w, client, worker, synced


async def step(worker: push.NodeWorker) -> None:
    """One round of the worker's loop body, without its waiting."""
    if worker.need_snapshot:
        await worker._snapshot()
    else:
        await worker._changes()


async def test_first_contact_is_a_snapshot_with_only_this_nodes_pods() -> None:
    w, client, worker, synced = await setup()
    mine = pod(name="a", node="n1", ip="10.0.0.1", role="RoleA")
    theirs = pod(name="b", node="n2", ip="10.0.0.2", role="RoleB")
    w.set_pod(mine)
    w.set_pod(theirs)
    await step(worker)
    method, url, body = client.requests[-1]
    assert (method, url) == ("PUT", "https://127.0.0.10:8182/v1/snapshot")
    assert [p["uid"] for p in body["pods"]] == [mine.uid]
    assert [r["role_name"] for r in body["roles"]] == ["RoleA"]
    assert body["roles"][0]["secret_access_key"] == "s"  # revealed on the wire only
    assert synced == ["n1"]


async def test_changes_then_revocation() -> None:
    w, client, worker, _ = await setup()
    await step(worker)
    p = pod(name="a", node="n1", ip=None, role="RoleA")
    w.set_pod(p)
    await step(worker)
    body = client.requests[-1][2]
    assert client.requests[-1][0] == "POST"
    assert len(body["upsert_roles"]) == 1 and body["upsert_pods"] == []  # credentials before the IP
    with_ip = pod(name="a", node="n1", ip="10.0.0.7", role="RoleA", uid=p.uid)
    w.set_pod(with_ip)
    await step(worker)
    body = client.requests[-1][2]
    assert body["upsert_roles"] == [] and [e["ip"] for e in body["upsert_pods"]] == ["10.0.0.7"]
    w.set_pod(pod(name="a", node="n1", ip="10.0.0.7", role="RoleA", uid=p.uid, deleting=True))
    await step(worker)
    body = client.requests[-1][2]
    assert body["remove_pods"] == [{"ip": "10.0.0.7", "uid": p.uid}]
    assert len(body["remove_roles"]) == 1
    count = len(client.requests)
    await step(worker)
    assert len(client.requests) == count  # nothing left to send


async def test_rejection_and_failure_lead_to_a_snapshot() -> None:
    w, client, worker, _ = await setup()
    await step(worker)
    w.set_pod(pod(name="a", node="n1", ip="10.0.0.1"))
    client.reject_next = True
    await step(worker)
    assert worker.need_snapshot
    await step(worker)
    assert client.requests[-1][0] == "PUT"
    w.set_pod(pod(name="b", node="n1", ip="10.0.0.2"))
    client.fail_next = True
    with pytest.raises(push.PushFailed):
        await step(worker)


async def test_restarted_proxy_pod_gets_a_snapshot() -> None:
    w, client, worker, _ = await setup()
    await step(worker)
    assert not worker.need_snapshot
    worker.set_proxy(proxy(restarts=1))
    assert worker.need_snapshot


async def test_drift_found_by_status_check() -> None:
    w, client, worker, _ = await setup()
    w.set_pod(pod(name="a", node="n1", ip="10.0.0.1"))
    await step(worker)
    await worker._check()  # the fake proxy reports generation None: it lost its state
    assert worker.need_snapshot


async def test_a_dead_node_does_not_delay_another() -> None:
    class Slow(FakeClient):
        async def request(self, method: str, url: str, body: bytes | None, kind: str, *, node: str = "") -> bytes:
            if "127.0.0.10" in url:
                await asyncio.sleep(3600)
            return await super().request(method, url, body, kind)

    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"))
    w.set_namespace(namespace("team", ".*"))
    client = Slow()
    done: list[str] = []

    async def on_synced(node: str) -> None:
        done.append(node)

    pusher = push.Pusher(client, w.desired_for_node, credentials_for(w), on_synced, port=8182, anti_entropy=3600)  # type: ignore[arg-type]
    pusher.set_proxy("dead", facts.ProxyFacts("dead", "p", "u1", "127.0.0.10", True, False, 0))
    pusher.set_proxy("alive", facts.ProxyFacts("alive", "p", "u2", "127.0.0.11", True, False, 0))
    pusher.start()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if "alive" in done:
            break
    assert done == ["alive"]
    for worker in pusher.workers.values():
        if worker.task:
            worker.task.cancel()
    await asyncio.gather(*(w.task for w in pusher.workers.values() if w.task), return_exceptions=True)


async def test_before_start_only_the_operators_own_pods_go_out_as_changes_then_a_snapshot_holds_everything() -> None:
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"), world.OwnPods("podiam-system", "podiam-operator"))
    w.set_namespace(namespace("team", ".*"))
    client = FakeClient()
    synced: list[str] = []

    async def on_synced(node: str) -> None:
        synced.append(node)

    worker = push.NodeWorker("n1", client, w.desired_for_node, credentials_for(w), on_synced, port=8182, anti_entropy=3600)  # type: ignore[arg-type]
    worker.set_proxy(proxy())
    me = pod(name="op-1", namespace="podiam-system", service_account="podiam-operator", role=None, node="n1", ip="10.0.0.50")
    other = pod(name="a", node="n1", ip="10.0.0.1", role="arn:aws:iam::123456789012:role/RoleA")
    w.set_pod(me)
    w.set_pod(other)

    await worker._announce()
    method, url, body = client.requests[-1]
    assert (method, url) == ("POST", "https://127.0.0.10:8182/v1/changes")
    assert body == {"upsert_roles": [], "remove_roles": [], "remove_pods": [],
                    "upsert_pods": [{"ip": "10.0.0.50", "uid": me.uid, "namespace": "podiam-system", "name": "op-1",
                                     "role_key": None, "node_identity": True}]}
    count = len(client.requests)
    await worker._announce()
    assert len(client.requests) == count and synced == []  # nothing new; an announcement never makes a node "synced"

    worker.full = True
    worker.resync()
    await step(worker)
    method, _, body = client.requests[-1]
    assert method == "PUT"
    entries = {e["name"]: e for e in body["pods"]}
    assert entries["op-1"]["node_identity"] is True and entries["a"]["role_key"] is not None
    assert synced == ["n1"]


@pytest.mark.parametrize("full", [False, True])
async def test_the_worker_loop_waits_between_rounds_past_its_anti_entropy_time(full: bool) -> None:
    """Rounds come with pokes or every anti-entropy interval: never back to back (a spin) once that time has passed."""
    w, client, worker, _ = await setup()
    calls = 0

    def desired(node: str) -> world.NodeDesired:
        nonlocal calls
        calls += 1
        return w.desired_for_node(node)

    worker.desired = desired
    worker.anti_entropy = 0.05
    worker.full = full
    task = asyncio.ensure_future(worker.run())
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 3 <= calls <= 20, calls


def gauge(name: str, labels: dict[str, str] | None = None) -> float | None:
    return prometheus_client.REGISTRY.get_sample_value(name, labels or {})


async def test_the_proxies_state_and_its_gauges_come_from_one_place() -> None:
    """Readiness, ``kubectl podiam`` and the gauges read the pushers' ProxyState, the gauges at each scrape."""
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"))
    w.set_namespace(namespace("team", ".*"))
    client = FakeClient()

    async def on_synced(node: str) -> None:
        pass

    pusher = push.Pusher(client, w.desired_for_node, credentials_for(w), on_synced, port=8182, anti_entropy=3600)  # type: ignore[arg-type]
    _metrics.observe_proxies(pusher.states)
    pusher.set_proxy("n1", proxy("n1"))
    pusher.set_proxy("n2", proxy("n2", uid="other"))
    w.set_pod(pod(name="a", node="n1", ip="10.0.0.1", role="RoleA"))
    w.set_pod(pod(name="b", node="n1", ip="10.0.0.2", role="RoleA"))
    assert {n: (s.known, s.synced) for n, s in pusher.states().items()} == {"n1": (True, False), "n2": (True, False)}
    assert (gauge("podiam_proxies", {"state": "synced"}), gauge("podiam_proxies", {"state": "pending"})) == (0, 2)
    await pusher.workers["n1"]._snapshot()
    state = pusher.states()["n1"]
    assert state.synced and pusher.synced_once("n1") and not pusher.synced_once("n2")
    assert (state.entries, state.roles, state.generation) == (2, 1, pusher.workers["n1"].generation)
    assert (gauge("podiam_proxies", {"state": "synced"}), gauge("podiam_proxies", {"state": "pending"})) == (1, 1)
    assert gauge("podiam_pod_entries") == 2  # what the proxies acknowledged, all nodes
    pusher.workers["n1"].resync()
    assert not pusher.states()["n1"].synced and gauge("podiam_proxies", {"state": "synced"}) == 0
    pusher.set_proxy("n2", None)
    assert not pusher.states()["n2"].known and gauge("podiam_proxies", {"state": "pending"}) == 1
