"""Leadership among replicas: the priority kopf sees, and ties (a fake peering object)."""

from __future__ import annotations

import asyncio
import datetime
import random
from typing import Any, NoReturn

import pytest

from podiam_operator._kits import leadership

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0


def test_the_configured_priority_wins_then_the_older_replica_then_the_draw() -> None:
    rng = random.Random(1)
    old = leadership.peering_priority(0, NOW, rng)
    assert leadership.peering_priority(0, NOW + 1, rng) < old  # started a second later: never preempts
    assert leadership.peering_priority(1, NOW + 3600, rng) > old  # configured higher: leads whatever its age
    assert leadership.peering_priority(-1, NOW - 3600, rng) < old
    same_second = {leadership.peering_priority(5, NOW, random.Random(seed)) for seed in range(50)}
    assert len(same_second) > 40  # replicas started together differ by their draw


@pytest.mark.parametrize("configured", [-leadership.MAX_CONFIGURED_PRIORITY, leadership.MAX_CONFIGURED_PRIORITY])
def test_every_priority_fits_the_api_servers_int64(configured: int) -> None:
    for started in (0.0, NOW, 10**11 - 1):
        assert abs(leadership.peering_priority(configured, started, random.Random(0))) < 2**63


def test_out_of_range_priorities_are_refused() -> None:
    with pytest.raises(ValueError):
        leadership.peering_priority(leadership.MAX_CONFIGURED_PRIORITY + 1, NOW, random.Random(0))


class FakeKube:
    def __init__(self, peers: dict[str, Any]) -> None:
        self.status = peers

    async def peers(self, name: str) -> dict[str, Any]:
        return self.status


class GaveWay(Exception):
    pass


def give_way() -> NoReturn:
    raise GaveWay


def entry(priority: int, *, age: float = 0.0) -> dict[str, Any]:
    seen = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age)
    return {"priority": priority, "lifetime": 6, "lastseen": seen.isoformat()}


def make(identity: str, priority: int, peers: dict[str, Any]) -> leadership.Leadership:
    return leadership.Leadership(FakeKube(peers), name="podiam", identity=identity, priority=priority,  # type: ignore[arg-type]
                                 interval=0.01, give_way=give_way)


async def test_of_two_tied_standbys_the_first_identity_gives_way_and_the_other_leads_once_it_is_gone() -> None:
    peers = {"replica-a": entry(7), "replica-b": entry(7)}
    with pytest.raises(GaveWay):
        await asyncio.wait_for(make("replica-a", 7, peers).wait_until_leader(), 1)
    other = make("replica-b", 7, peers)
    assert await other.higher_peers() == ["replica-a"]  # kopf pauses it too while replica-a's entry lives
    waiting = asyncio.ensure_future(other.wait_until_leader())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    peers["replica-a"] = entry(7, age=10)  # replica-a left: its entry expires
    await asyncio.wait_for(waiting, 1)


async def test_a_higher_peer_keeps_a_standby_waiting_and_a_dead_one_does_not() -> None:
    peers = {"leader": entry(9), "gone": entry(20, age=60), "standby": entry(5)}
    standby = make("standby", 5, peers)
    waiting = asyncio.ensure_future(standby.wait_until_leader())
    await asyncio.sleep(0.05)
    assert not waiting.done() and await standby.higher_peers() == ["leader"]
    del peers["leader"]
    await asyncio.wait_for(waiting, 1)


async def test_a_replica_leads_only_once_its_own_entry_has_been_listed_for_an_interval() -> None:
    # Two replicas started together were both active for a moment: each looked before the other had listed itself.
    peers: dict[str, Any] = {}
    alone = make("replica-a", 5, peers)
    alone.interval = 0.05
    waiting = asyncio.ensure_future(alone.wait_until_leader())
    await asyncio.sleep(0.2)
    assert not waiting.done()  # kopf has not listed it yet: a peer may have started with it
    peers["replica-a"] = entry(5)
    listed = asyncio.get_running_loop().time()
    await asyncio.wait_for(waiting, 1)
    assert asyncio.get_running_loop().time() - listed >= 0.05


async def test_observed_from_the_start_a_replica_that_listed_for_longer_than_the_interval_leads_at_once() -> None:
    peers: dict[str, Any] = {"replica-a": entry(5)}
    replica = make("replica-a", 5, peers)
    replica.interval = 0.2
    observing = asyncio.ensure_future(replica.observe())
    await asyncio.wait_for(observing, 1)  # its own entry seen: done
    await asyncio.sleep(0.25)  # the listing of the cluster
    began = asyncio.get_running_loop().time()
    await asyncio.wait_for(replica.wait_until_leader(), 1)
    assert asyncio.get_running_loop().time() - began < 0.1  # no second interval to wait


async def test_observing_keeps_asking_until_the_replica_is_listed() -> None:
    peers: dict[str, Any] = {}
    replica = make("replica-a", 5, peers)
    observing = asyncio.ensure_future(replica.observe())
    await asyncio.sleep(0.05)
    assert not observing.done()
    peers["replica-a"] = entry(5)
    await asyncio.wait_for(observing, 1)
