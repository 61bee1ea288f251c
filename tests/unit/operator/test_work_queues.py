"""The engine's write queue (KeyedWork) and the push client's Limiter: order, dedup, one worker per key, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from podiam_operator._engine import tasks
from podiam_operator._kits import limits

pytestmark = pytest.mark.unit


async def test_limiter_bounds_holders_and_serves_in_order() -> None:
    limiter = limits.Limiter(2)
    inside, most, order = 0, 0, []

    async def hold(i: int) -> None:
        nonlocal inside, most
        async with limiter:
            order.append(i)
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(hold(i) for i in range(50)))
    assert most == 2
    assert order == list(range(50))


async def test_limiter_cancelled_waiter_does_not_leak_a_slot() -> None:
    limiter = limits.Limiter(1)
    release = asyncio.Event()

    async def holder() -> None:
        async with limiter:
            await release.wait()

    first = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    waiting.cancel()
    release.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The slot is free again: a new holder gets it at once, and only one at a time.
    async with limiter:
        assert limiter.waiting == 0
        blocked = asyncio.ensure_future(holder())
        await asyncio.sleep(0.01)
        assert not blocked.done()
    await asyncio.wait_for(blocked, 1)


async def test_limiter_slot_handed_over_while_cancelled_is_passed_on() -> None:
    limiter = limits.Limiter(1)
    await limiter.__aenter__()
    waiter = asyncio.ensure_future(limiter.__aenter__())
    third = asyncio.ensure_future(limiter.__aenter__())
    await asyncio.sleep(0)
    await limiter.__aexit__()  # hands the slot to ``waiter``...
    waiter.cancel()  # ...which is cancelled before it runs: the slot must go to ``third``
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(third, 1)


async def test_keyed_work_dedups_pending_marks_and_reruns_a_key_marked_while_busy() -> None:
    seen: list[str] = []
    busy = asyncio.Event()
    proceed = asyncio.Event()

    async def job(key: str) -> None:
        seen.append(key)
        if key == "a" and seen.count("a") == 1:
            busy.set()
            await proceed.wait()

    work: tasks.KeyedWork[str] = tasks.KeyedWork(job, concurrency=4)
    runner = asyncio.ensure_future(work.run())
    try:
        work.mark(["a"])
        await asyncio.wait_for(busy.wait(), 1)
        work.mark(["a", "a", "b", "b"])  # "a" is busy: once more after; "b" once
        await asyncio.sleep(0.01)
        assert seen.count("a") == 1  # never two workers on one key
        proceed.set()
        for _ in range(100):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.01)
        assert sorted(seen) == ["a", "a", "b"]
        assert len(work) == 0
    finally:
        runner.cancel()


async def test_keyed_work_runs_keys_concurrently_and_survives_a_failing_job() -> None:
    running, most = 0, 0
    done: list[int] = []

    async def job(key: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        if key == 3:
            raise RuntimeError("boom")
        done.append(key)

    work: tasks.KeyedWork[int] = tasks.KeyedWork(job, concurrency=5)
    runner = asyncio.ensure_future(work.run())
    try:
        work.mark(range(20))
        for _ in range(200):
            if len(done) == 19:
                break
            await asyncio.sleep(0.01)
        assert sorted(done) == [k for k in range(20) if k != 3]
        assert most == 5
    finally:
        runner.cancel()


async def test_keyed_work_waits_the_delay_after_a_mark() -> None:
    loop = asyncio.get_running_loop()
    marked_at, ran_at = loop.time(), []

    async def job(key: str) -> None:
        ran_at.append(loop.time())

    work: tasks.KeyedWork[str] = tasks.KeyedWork(job, concurrency=1, delay=0.1)
    runner = asyncio.ensure_future(work.run())
    try:
        work.mark(["x"])
        await asyncio.sleep(0.3)
        assert len(ran_at) == 1 and ran_at[0] - marked_at >= 0.09
    finally:
        runner.cancel()


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not done within 2 s")


async def test_keyed_work_takes_background_keys_only_when_nothing_else_waits() -> None:
    seen: list[str] = []

    async def job(key: str) -> None:
        seen.append(key)

    work: tasks.KeyedWork[str] = tasks.KeyedWork(job, concurrency=1)
    work.mark(["b1", "b2", "shared"], background=True)
    work.mark(["urgent", "shared"])  # "shared" is now urgent: it leaves the background queue
    work.mark(["urgent"], background=True)  # already waiting as urgent: stays there, once
    runner = asyncio.ensure_future(work.run())
    try:
        await _until(lambda: len(seen) == 4)
        assert seen == ["urgent", "shared", "b1", "b2"]
        assert len(work) == 0
    finally:
        runner.cancel()


async def test_keyed_work_holds_background_keys_until_released() -> None:
    seen: list[str] = []

    async def job(key: str) -> None:
        seen.append(key)

    work: tasks.KeyedWork[str] = tasks.KeyedWork(job, concurrency=2)
    work.hold_background()
    runner = asyncio.ensure_future(work.run())
    try:
        work.mark(["later"], background=True)
        work.mark(["now"])
        await _until(lambda: seen == ["now"])
        await asyncio.sleep(0.05)
        assert seen == ["now"] and len(work) == 1  # held, not lost
        work.release_background()
        await _until(lambda: seen == ["now", "later"])
    finally:
        runner.cancel()
