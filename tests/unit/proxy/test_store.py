"""The store's rules: uid protection, push order, snapshot atomicity, expiry margin, waiting for pushes."""

from __future__ import annotations

import asyncio
import datetime
import json
import time

import pydantic
import pytest

from metadata_proxy import _store, wire
from localcluster.proxy import pod_entry, role_credentials
from tests.unit.proxy.conftest import Clock

pytestmark = pytest.mark.unit


def test_role_then_pod_in_one_push_is_served(store: _store.Store) -> None:
    ack = store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1")], upsert_pods=[pod_entry("10.0.0.1", "k1")]))
    assert ack == wire.Ack(applied=2)
    pod, creds = store.lookup("10.0.0.1")
    assert pod is not None and creds is not None and creds.role_name == "r1"
    assert store.lookup("10.0.0.2") == (None, None)


def test_pod_naming_an_unknown_role_is_refused(store: _store.Store) -> None:
    ack = store.apply_changes(wire.Changes(upsert_pods=[pod_entry("10.0.0.1", "nope", uid="u1")]))
    assert ack.applied == 0
    assert [(r.ip, r.uid) for r in ack.rejected] == [("10.0.0.1", "u1")]
    assert "unknown role key" in ack.rejected[0].reason
    assert store.pod("10.0.0.1") is None


def test_an_ip_held_by_another_uid_is_neither_replaced_nor_removed(store: _store.Store) -> None:
    store.apply_changes(wire.Changes(
        upsert_roles=[role_credentials("k1", "r1"), role_credentials("k2", "r2")],
        upsert_pods=[pod_entry("10.0.0.1", "k1", uid="old")],
    ))
    ack = store.apply_changes(wire.Changes(
        upsert_pods=[pod_entry("10.0.0.1", "k2", uid="new")], remove_pods=[wire.PodRemoval(ip="10.0.0.1", uid="other")],
    ))
    assert ack.applied == 0 and len(ack.rejected) == 2
    assert all("held by another pod (uid old)" in r.reason for r in ack.rejected)
    held = store.pod("10.0.0.1")
    assert held is not None and held.uid == "old" and held.role_key == "k1"


def test_the_same_uid_replaces_its_entry(store: _store.Store) -> None:
    store.apply_changes(wire.Changes(
        upsert_roles=[role_credentials("k1", "r1"), role_credentials("k2", "r2")],
        upsert_pods=[pod_entry("10.0.0.1", "k1", uid="u")],
    ))
    assert store.apply_changes(wire.Changes(upsert_pods=[pod_entry("10.0.0.1", "k2", uid="u")])).applied == 1
    _, creds = store.lookup("10.0.0.1")
    assert creds is not None and creds.role_name == "r2"


def test_ip_reuse_in_one_push_removals_come_before_upserts(store: _store.Store) -> None:
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1")], upsert_pods=[pod_entry("10.0.0.1", "k1", uid="a")]))
    ack = store.apply_changes(wire.Changes(
        upsert_pods=[pod_entry("10.0.0.1", "k1", uid="b")], remove_pods=[wire.PodRemoval(ip="10.0.0.1", uid="a")],
    ))
    assert ack == wire.Ack(applied=2)
    held = store.pod("10.0.0.1")
    assert held is not None and held.uid == "b"


def test_removing_an_absent_pod_is_idempotent(store: _store.Store) -> None:
    assert store.apply_changes(wire.Changes(remove_pods=[wire.PodRemoval(ip="10.0.0.9", uid="x")])) == wire.Ack(applied=1)


def test_role_removal_revokes_at_once_even_for_a_pod_still_naming_it(store: _store.Store) -> None:
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1")], upsert_pods=[pod_entry("10.0.0.1", "k1")]))
    store.apply_changes(wire.Changes(remove_roles=["k1"]))
    pod, creds = store.lookup("10.0.0.1")
    assert pod is not None and creds is None


def test_role_removal_comes_after_pod_upserts_in_one_push(store: _store.Store) -> None:
    # Order: role upserts, pod removals, pod upserts, role removals.
    ack = store.apply_changes(wire.Changes(
        upsert_roles=[role_credentials("k1", "r1")], upsert_pods=[pod_entry("10.0.0.1", "k1")], remove_roles=["k1"],
    ))
    assert ack.applied == 3 and store.role_count == 0 and store.lookup("10.0.0.1")[1] is None


def test_credentials_inside_the_margin_are_refused_and_never_stored(store: _store.Store) -> None:
    ack = store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1", expires_in=299)]))
    assert ack.applied == 0
    assert ack.rejected[0].role_key == "k1" and "expiry margin" in ack.rejected[0].reason
    assert store.role_count == 0


def test_credentials_stop_being_served_when_they_enter_the_margin(store: _store.Store, clock: Clock) -> None:
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1", expires_in=1000)], upsert_pods=[pod_entry("10.0.0.1", "k1")]))
    assert store.lookup("10.0.0.1")[1] is not None
    clock.now += 699
    assert store.lookup("10.0.0.1")[1] is not None
    clock.now += 2  # 299 s left: inside the 300 s margin
    assert store.lookup("10.0.0.1")[1] is None


def test_snapshot_replaces_everything_and_makes_ready(store: _store.Store) -> None:
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("old", "old")], upsert_pods=[pod_entry("10.0.0.1", "old")]))
    assert not store.ready
    ack = store.apply_snapshot(wire.Snapshot(generation=7, roles=[role_credentials("k2", "r2")], pods=[pod_entry("10.0.0.2", "k2")]))
    assert ack == wire.Ack(applied=2)
    assert store.ready and store.snapshot_generation == 7
    assert store.lookup("10.0.0.1") == (None, None)
    assert store.lookup("10.0.0.2")[1] is not None
    assert store.status("n") == wire.ProxyStatus(node_name="n", ready=True, snapshot_generation=7, roles=1, pods=1)


def test_snapshot_refuses_doubly_claimed_ips_unknown_roles_and_expiring_credentials(store: _store.Store) -> None:
    ack = store.apply_snapshot(wire.Snapshot(
        generation=1,
        roles=[role_credentials("k1", "r1"), role_credentials("soon", "soon", expires_in=10)],
        pods=[
            pod_entry("10.0.0.1", "k1", uid="a"), pod_entry("10.0.0.1", "k1", uid="b"),  # one IP, two pods
            pod_entry("10.0.0.2", "missing", uid="c"),
            pod_entry("10.0.0.3", "soon", uid="d"),
            pod_entry("10.0.0.4", "k1", uid="e"),
        ],
    ))
    assert ack.applied == 2  # k1 and the pod at 10.0.0.4
    assert sorted((r.ip, r.uid, r.role_key) for r in ack.rejected) == [
        ("", "", "soon"), ("10.0.0.1", "a", None), ("10.0.0.1", "b", None), ("10.0.0.2", "c", None), ("10.0.0.3", "d", None),
    ]
    assert store.pod("10.0.0.1") is None and store.pod("10.0.0.4") is not None


def test_ips_are_normalised_on_the_wire() -> None:
    assert pod_entry("::FFFF:10.0.0.1", "k").ip == "::ffff:a00:1"
    with pytest.raises(pydantic.ValidationError):
        pod_entry("10.0.0.256", "k")


def test_rendered_document_is_what_sdks_parse() -> None:
    creds = role_credentials("k", "MyRole", access_key_id="ASIAEXAMPLEEXAMPLE1", secret_access_key="s3cr3t", session_token="t0k3n")
    rendered = _store.Credentials.render(creds)
    document = json.loads(rendered.document)
    assert list(document) == ["Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"]
    assert document["Code"] == "Success" and document["Type"] == "AWS-HMAC"
    assert (document["AccessKeyId"], document["SecretAccessKey"], document["Token"]) == ("ASIAEXAMPLEEXAMPLE1", "s3cr3t", "t0k3n")
    for field in ("LastUpdated", "Expiration"):
        parsed = datetime.datetime.strptime(document[field], "%Y-%m-%dT%H:%M:%SZ")
        assert document[field].endswith("Z") and parsed.year >= 2024
    assert datetime.datetime.strptime(document["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc) == creds.expiration
    info = json.loads(rendered.info)
    assert info["InstanceProfileArn"] == "arn:aws:iam::123456789012:instance-profile/MyRole"
    assert "s3cr3t" not in repr(rendered) and "t0k3n" not in repr(rendered)
    assert "s3cr3t" not in repr(creds) and "s3cr3t" not in creds.model_dump_json()


async def test_wait_returns_as_soon_as_the_push_arrives(store: _store.Store) -> None:
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1")]))

    async def push_later() -> None:
        await asyncio.sleep(0.1)
        store.apply_changes(wire.Changes(upsert_pods=[pod_entry("10.0.0.1", "k1")]))

    pusher = asyncio.create_task(push_later())
    started = time.monotonic()
    results = await asyncio.gather(*(store.wait_lookup("10.0.0.1", 5.0) for _ in range(3)))
    elapsed = time.monotonic() - started
    await pusher
    assert all(creds is not None for _, creds in results)
    assert 0.09 <= elapsed < 1.0


async def test_wait_ignores_unrelated_pushes_and_times_out(store: _store.Store) -> None:
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1")]))

    async def unrelated() -> None:
        for i in range(5):
            await asyncio.sleep(0.02)
            store.apply_changes(wire.Changes(upsert_pods=[pod_entry(f"10.0.1.{i}", "k1")]))

    task = asyncio.create_task(unrelated())
    started = time.monotonic()
    pod, creds = await store.wait_lookup("10.0.0.1", 0.3)
    elapsed = time.monotonic() - started
    await task
    assert (pod, creds) == (None, None)
    assert 0.29 <= elapsed < 0.6


async def test_wait_for_credentials_of_a_known_pod(store: _store.Store) -> None:
    # The pod entry came first (its role was refreshed away); the role follows.
    store.apply_changes(wire.Changes(upsert_roles=[role_credentials("k1", "r1")], upsert_pods=[pod_entry("10.0.0.1", "k1")]))
    store.apply_changes(wire.Changes(remove_roles=["k1"]))
    asyncio.get_running_loop().call_later(0.05, store.apply_changes, wire.Changes(upsert_roles=[role_credentials("k1", "r1")]))
    pod, creds = await store.wait_lookup("10.0.0.1", 2.0)
    assert pod is not None and creds is not None


async def test_zero_wait_does_not_wait(store: _store.Store) -> None:
    started = time.monotonic()
    assert await store.wait_lookup("10.0.0.1", 0) == (None, None)
    assert time.monotonic() - started < 0.05


# -- node-identity entries (the operator's own pods) ---------------------------------


def node_identity(ip: str, uid: str = "op-1") -> wire.PodEntry:
    return wire.PodEntry(ip=ip, uid=uid, namespace="podiam-system", name="podiam-operator-x", node_identity=True)


def test_a_pod_entry_names_a_role_key_or_the_node_identity_never_both_nor_neither() -> None:
    assert node_identity("10.0.0.9").role_key is None
    assert pod_entry("10.0.0.1", "k1").node_identity is False
    for bad in ({"role_key": "k1", "node_identity": True}, {}):
        with pytest.raises(pydantic.ValidationError, match="either a role_key or node_identity"):
            wire.PodEntry(ip="10.0.0.1", uid="u", namespace="n", name="p", **bad)  # type: ignore[arg-type]


def test_node_identity_entries_need_no_role_and_follow_the_uid_rules(store: _store.Store) -> None:
    # Changes alone, before any snapshot: what a newly active operator sends for its own pods first.
    ack = store.apply_changes(wire.Changes(upsert_pods=[node_identity("10.0.0.9")]))
    assert ack == wire.Ack(applied=1) and not store.ready
    pod, creds = store.lookup("10.0.0.9")
    assert pod is not None and pod.node_identity and creds is None
    # Another uid can neither take the IP over nor remove it.
    ack = store.apply_changes(wire.Changes(upsert_pods=[node_identity("10.0.0.9", uid="op-2")],
                                           remove_pods=[wire.PodRemoval(ip="10.0.0.9", uid="op-2")]))
    assert ack.applied == 0 and len(ack.rejected) == 2
    assert store.pod("10.0.0.9") == node_identity("10.0.0.9")
    # A snapshot keeps it (no role needed), alongside ordinary pods.
    ack = store.apply_snapshot(wire.Snapshot(generation=1, roles=[role_credentials("k1", "r1")],
                                             pods=[node_identity("10.0.0.9"), pod_entry("10.0.0.1", "k1")]))
    assert ack.rejected == [] and store.pod_count == 2 and sorted(store.pod_ips()) == ["10.0.0.1", "10.0.0.9"]


async def test_a_wait_ends_at_once_for_a_node_identity_pod(store: _store.Store) -> None:
    store.apply_changes(wire.Changes(upsert_pods=[node_identity("10.0.0.9")]))
    started = time.monotonic()
    pod, creds = await store.wait_lookup("10.0.0.9", 5.0)
    assert pod is not None and pod.node_identity and creds is None
    assert time.monotonic() - started < 1.0
