"""Pods starting without an IP in the API: the operator announces them (pending), the node's records name their IP.

The metadata app asks a real pod-IP reader (``--serve-pod-ips``'s server on
a Unix socket). The caller is 127.0.0.1, as in test_imds, an address the
reader never takes from a CNI result (test_cni), so the reader here holds
its claims in memory rather than in files.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from metadata_proxy import _cni, _metrics, _pod_ips, _store, wire
from localcluster.proxy import pod_entry, role_credentials
from tests.unit.proxy.conftest import POD_IP, Clock, ImdsFactory
from tests.unit.proxy.test_cni import cached

pytestmark = pytest.mark.unit

CREDS = "/latest/meta-data/iam/security-credentials/"
UID = str(uuid.uuid4())


def pending(uid: str = UID, key: str = "k1", namespace: str = "team", name: str = "app") -> wire.PendingPod:
    return wire.PendingPod(uid=uid, namespace=namespace, name=name, role_key=key)


def claim(uid: str = UID, written: float = 100.0, namespace: str = "team", name: str = "app") -> _cni.Claim:
    return _cni.Claim(ip=POD_IP, uid=uid, namespace=namespace, name=name, network="cbr0", written=written)


def announce(store: _store.Store, *announced: wire.PendingPod) -> wire.Ack:
    roles = [role_credentials("k1", "MyRole"), role_credentials("k2", "OtherRole")]
    return store.apply_snapshot(wire.Snapshot(generation=1, roles=roles, pending=list(announced)))


# -- the rule, in the store --------------------------------------------------------------------------------


def test_a_pending_pod_is_known_by_the_newest_record_of_its_ip(store: _store.Store) -> None:
    announce(store, pending())
    entry, creds = store.learn(POD_IP, [claim()])
    assert creds is not None and creds.role_name == "MyRole"
    assert entry is not None and (entry.uid, entry.namespace, entry.name, entry.role_key) == (UID, "team", "app", "k1")
    assert store.pod(POD_IP) is None  # nothing kept: every request checks again
    # An older set-up that left its record behind (the IP was reused since) does not count.
    assert store.learn(POD_IP, [claim(uid="gone", written=50.0), claim()])[1] is not None


@pytest.mark.parametrize("claims", [
    [],
    [claim(uid="somebody-else")],  # a pod the operator did not announce (no role, or another node's)
    [claim(namespace="other")], [claim(name="other")],  # the uid is the operator's, the rest must be too
    [claim(), claim(uid="newer", written=200.0)],  # the IP was set up again since: for another pod
    [claim(), claim(uid="same-instant")],  # which set-up holds the IP cannot be told
])
def test_anything_else_is_nobody(store: _store.Store, claims: list[_cni.Claim]) -> None:
    announce(store, pending(), pending(uid="somebody-else-but-not-announced", key="k2"))
    assert store.learn(POD_IP, claims) == (None, None)


def test_an_ip_with_an_entry_is_the_operators_alone(store: _store.Store) -> None:
    roles = [role_credentials("k1", "MyRole"), role_credentials("k2", "OtherRole")]
    store.apply_snapshot(wire.Snapshot(generation=1, roles=roles, pods=[pod_entry(POD_IP, "k2")], pending=[pending()]))
    assert store.learn(POD_IP, [claim(written=10**9)]) == (None, None)


def test_expired_credentials_are_not_served_this_way_either(store: _store.Store, clock: Clock) -> None:
    announce(store, pending())
    clock.now += 3600 - 299  # inside the expiry margin
    assert store.learn(POD_IP, [claim()]) == (None, None)


def test_what_is_announced_and_until_when(store: _store.Store) -> None:
    ack = announce(store, pending(), pending(uid="no-role", key="unknown"))
    assert [(r.uid, r.role_key) for r in ack.rejected] == [("no-role", "unknown")]
    assert store.status("n").pending == 1
    ack = store.apply_changes(wire.Changes(upsert_pending=[pending(uid="b", key="k2"), pending(uid="c", key="nope")]))
    assert [r.uid for r in ack.rejected] == ["c"] and store.pending_count == 2
    # Its IP arrived: its entry replaces it.
    store.apply_changes(wire.Changes(upsert_pods=[pod_entry("10.0.0.9", "k1", uid=UID, namespace="team", name="app")]))
    assert store.pending_count == 1 and store.learn(POD_IP, [claim()]) == (None, None)
    # Revoked before it had an IP.
    store.apply_changes(wire.Changes(remove_pending=["b"]))
    assert store.pending_count == 0
    # A pod that has an entry is not pending.
    ack = store.apply_changes(wire.Changes(upsert_pending=[pending()]))
    assert ack.rejected and "has an entry already" in ack.rejected[0].reason


def test_new_fields_stay_out_of_bodies_that_do_not_use_them() -> None:
    """What an operator or proxy from before the pending pods reads: no new key unless it is used."""
    assert set(wire.Changes().model_dump(mode="json")) == {"upsert_roles", "remove_roles", "upsert_pods", "remove_pods"}
    assert set(wire.Snapshot(generation=1).model_dump(mode="json")) == {"generation", "roles", "pods"}
    assert "pending" not in wire.ProxyStatus(node_name="n", ready=True, snapshot_generation=1, roles=0, pods=0).model_dump()
    assert wire.ProxyStatus.model_validate_json('{"node_name":"n","ready":true,"snapshot_generation":1,"roles":0,"pods":0}').pending == 0


# -- the metadata port, with a real pod-IP reader -------------------------------------------------------------


class Held(_cni.Results):
    """The reader's records, held here: whatever ``claims`` says."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"), ".*")
        self.held: list[_cni.Claim] = []

    def claims(self, ip: str) -> list[_cni.Claim]:
        return [c for c in self.held if c.ip == ip]


@pytest.fixture
async def reader(tmp_path: Path) -> AsyncIterator[tuple[Held, Path]]:
    """(its records, its socket): a pod-IP reader answering on a Unix socket."""
    held, socket = Held(), tmp_path / "pod-ips.sock"
    task = asyncio.ensure_future(_pod_ips.serve(socket, held))
    for _ in range(100):
        if socket.exists():
            break
        await asyncio.sleep(0.01)
    yield held, socket
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def sample(metrics: _metrics.Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("podiam_proxy_credential_lookups_total", {"result": result}) or 0.0


async def test_a_starting_pod_is_served_before_its_ip_arrives(imds: ImdsFactory, store: _store.Store, metrics: _metrics.Metrics,
                                                              reader: tuple[Held, Path]) -> None:
    held, socket = reader
    held.held.append(claim())
    announce(store, pending())
    client = await imds(pod_ips_socket=socket)  # no wait at all: the answer is there at once
    response = await client.get(CREDS)
    assert response.status == 200 and await response.text() == "MyRole"
    document = await (await client.get(CREDS + "MyRole")).json(content_type=None)
    assert document["Code"] == "Success"
    assert (await client.get(CREDS + "OtherRole")).status == 404
    assert sample(metrics, "learned") == 2 and sample(metrics, "wrong_role") == 1
    # Revoked (or deleted) before its IP arrived: the next request gets nothing.
    store.apply_changes(wire.Changes(remove_pending=[UID]))
    assert (await client.get(CREDS)).status == 404


async def test_the_announcement_may_come_while_the_request_waits(imds: ImdsFactory, store: _store.Store,
                                                                 reader: tuple[Held, Path]) -> None:
    held, socket = reader
    held.held.append(claim())
    announce(store)  # the role only
    client = await imds(pod_ips_socket=socket, credential_wait=2)
    asyncio.get_running_loop().call_later(0.2, lambda: store.apply_changes(wire.Changes(upsert_pending=[pending()])))
    started = asyncio.get_running_loop().time()
    response = await client.get(CREDS)
    assert response.status == 200 and 0.2 <= asyncio.get_running_loop().time() - started < 1.5


async def test_only_the_announced_pod(imds: ImdsFactory, store: _store.Store, reader: tuple[Held, Path]) -> None:
    held, socket = reader
    held.held.append(claim(name="impostor"))  # the node set the IP up for a pod of this uid under another name
    announce(store, pending())
    assert (await (await imds(pod_ips_socket=socket)).get(CREDS)).status == 404


async def test_no_reader_means_waiting_for_the_operator(imds: ImdsFactory, store: _store.Store, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    announce(store, pending())
    client = await imds(pod_ips_socket=tmp_path / "nobody-listens.sock", credential_wait=0.3)
    asyncio.get_running_loop().call_later(0.1, lambda: store.apply_changes(wire.Changes(upsert_pods=[
        pod_entry(POD_IP, "k1", uid=UID, namespace="team", name="app")])))
    assert (await client.get(CREDS)).status == 200  # from the operator's entry
    assert "the pod-IP reader did not answer" in caplog.text


async def test_the_reader_answers_claims_and_nothing_else(aiohttp_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "cbr0-c0ffee-eth0"
    path.write_text(cached(ip="10.244.0.7", uid=UID))
    os.utime(path, (100.0, 100.0))
    client = await aiohttp_client(_pod_ips.make_app(_cni.Results(tmp_path, ".*")))
    answer = await (await client.get(_pod_ips.CLAIMS_PATH, params={"ip": "10.244.0.7"})).json()
    assert answer == {"claims": [{"ip": "10.244.0.7", "uid": UID, "namespace": "team", "name": "app", "network": "cbr0",
                                  "written": 100.0}]}
    assert (await client.get(_pod_ips.CLAIMS_PATH, params={"ip": "nope"})).status == 400
    assert (await client.get("/anything-else")).status == 404


def test_the_reader_needs_its_socket(capsys: pytest.CaptureFixture[str]) -> None:
    from metadata_proxy import __main__ as entry

    with pytest.raises(SystemExit) as exited:
        entry.main(["--serve-pod-ips"])
    assert exited.value.code == 2 and "--serve-pod-ips needs --pod-ips-socket" in capsys.readouterr().err
