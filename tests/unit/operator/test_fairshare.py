"""Which STS call goes next: budgets per namespace, renewals first, namespaces in turn (pure logic)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from podiam_operator._core import fairshare
from podiam_operator._kits import sts
from tests.support.clock import FakeClock

pytestmark = pytest.mark.unit
_ids = itertools.count()


def ticket(*payers: str, priority: int = fairshare.NEW) -> fairshare.Ticket:
    return fairshare.Ticket(next(_ids), frozenset(payers), priority)


def drain(share: fairshare.FairShare, now: float) -> list[tuple[int, str]]:
    picked = []
    while (found := share.pick(now)) is not None:
        picked.append((found[0].id, found[1]))
    return picked


def test_a_namespace_gets_its_burst_then_its_rate() -> None:
    share = fairshare.FairShare(burst=3, rate=0.5)
    for _ in range(10):
        share.add(ticket("greedy"))
    assert len(drain(share, 0.0)) == 3
    assert share.next_refill(0.0) == pytest.approx(2.0)
    assert drain(share, 1.9) == []
    assert len(drain(share, 2.0)) == 1
    assert len(drain(share, 6.0)) == 2  # two seconds a call
    assert len(share) == 4


def test_another_namespace_is_not_held_up_by_a_spent_budget() -> None:
    share = fairshare.FairShare(burst=2, rate=0.1)
    for _ in range(50):
        share.add(ticket("greedy"))
    drain(share, 0.0)
    victim = ticket("victim")
    share.add(victim)
    assert share.pick(0.0) == (victim, "victim")


def test_namespaces_take_turns_whatever_their_queues() -> None:
    share = fairshare.FairShare(burst=100, rate=1)
    greedy = [ticket("greedy") for _ in range(20)]
    for t in greedy:
        share.add(t)
    quiet = [ticket("quiet"), ticket("quiet")]
    for t in quiet:
        share.add(t)
    order = [payer for _, payer in drain(share, 0.0)]
    # "greedy" queued first, but "quiet" is served on every other turn until it has nothing left.
    assert order[:4] in (["greedy", "quiet", "greedy", "quiet"], ["quiet", "greedy", "quiet", "greedy"])
    assert order[4:] == ["greedy"] * 18


def test_renewals_go_before_first_fetches() -> None:
    share = fairshare.FairShare(burst=100, rate=1)
    new = [ticket("a") for _ in range(5)]
    for t in new:
        share.add(t)
    renewal = ticket("b", priority=fairshare.RENEWAL)
    share.add(renewal)
    assert share.pick(0.0) == (renewal, "b")


def test_a_renewal_over_budget_does_not_block_others_first_fetches() -> None:
    share = fairshare.FairShare(burst=1, rate=0.01)
    share.add(ticket("a"))
    drain(share, 0.0)
    share.add(ticket("a", priority=fairshare.RENEWAL))
    other = ticket("b")
    share.add(other)
    assert share.pick(0.0) == (other, "b")
    assert share.pick(0.0) is None


def test_a_shared_credential_set_is_paid_by_a_namespace_with_budget_left() -> None:
    share = fairshare.FairShare(burst=1, rate=0.01)
    share.add(ticket("greedy"))
    drain(share, 0.0)
    shared = ticket("greedy", "victim")
    share.add(shared)
    assert share.pick(0.0) == (shared, "victim")
    assert len(share) == 0  # queued under both, picked once


def test_calls_nobody_uses_are_never_limited() -> None:
    share = fairshare.FairShare(burst=1, rate=0.01)
    for _ in range(5):
        share.add(ticket())
    assert len(drain(share, 0.0)) == 5


def test_discarded_tickets_leave_every_queue_and_idle_namespaces_are_forgotten() -> None:
    share = fairshare.FairShare(burst=2, rate=1)
    t = ticket("a", "b")
    share.add(t)
    share.discard(t.id)
    assert share.pick(0.0) is None and len(share) == 0 and share.next_refill(0.0) is None
    share.add(ticket("a"))
    drain(share, 0.0)
    assert share.tokens("a", 0.0) == 1
    share.add(ticket("c"))
    drain(share, 10.0)  # "a" has refilled and waits for nothing: its bucket goes
    assert "a" not in share._buckets


def test_can_pay() -> None:
    share = fairshare.FairShare(burst=1, rate=1)
    share.add(ticket("a"))
    drain(share, 0.0)
    assert not share.can_pay(frozenset({"a"}), 0.5)
    assert share.can_pay(frozenset({"a", "b"}), 0.5)
    assert share.can_pay(frozenset({"a"}), 1.0)


def test_pick_without_renewals_leaves_them_waiting() -> None:
    share = fairshare.FairShare(burst=10, rate=1)
    renewal, new = ticket("a", priority=fairshare.RENEWAL), ticket("b")
    share.add(renewal)
    share.add(new)
    assert share.pick(0.0, renewals=False) == (new, "b")
    assert share.pick(0.0, renewals=False) is None
    assert share.pick(0.0) == (renewal, "a")


async def test_renewals_never_take_the_last_slot_from_a_first_fetch() -> None:
    """A slow STS: renewals that keep timing out would hold every slot, and a new pod would never get an answer."""
    dispatcher = sts.Dispatcher(FakeClock(), concurrency=3, burst=100, rate=100)
    order: list[str] = []
    release = asyncio.Event()

    async def call(name: str, *, renewal: bool) -> None:
        async with dispatcher.slot(frozenset({"ns"}), renewal=renewal):
            order.append(name)
            await release.wait()

    renewals = [asyncio.ensure_future(call(f"renewal-{i}", renewal=True)) for i in range(5)]
    await asyncio.sleep(0)
    new = asyncio.ensure_future(call("new", renewal=False))
    for _ in range(3):
        await asyncio.sleep(0)
    assert order == ["renewal-0", "renewal-1", "new"]  # the third slot waited for the first fetch
    release.set()
    await asyncio.gather(*renewals, new)
    assert sorted(order) == sorted([f"renewal-{i}" for i in range(5)] + ["new"])
