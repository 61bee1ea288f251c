"""The credential cache with a fake STS source and an injected clock: no sleeping, no network."""

from __future__ import annotations

import asyncio
import datetime
import random

import pydantic
import pytest

from podiam_operator._kits import clock as clocks
from tests.support.clock import FakeClock
from podiam_operator._kits import sts

pytestmark = pytest.mark.unit
ARN = "arn:aws:iam::123456789012:role/R"
REQUEST = sts.AssumeRequest(ARN, "podiam", 3600)


class FakeSource:
    """Answers AssumeRole after ``latency`` (fake time); raises what ``failures`` holds first."""

    def __init__(self, clock: clocks.Clock, *, latency: float = 0.0) -> None:
        self.clock = clock
        self.latency = latency
        self.calls: list[sts.AssumeRequest] = []
        self.failures: list[sts.StsError] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None

    async def assume_role(self, request: sts.AssumeRequest) -> sts.Credentials:
        self.calls.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.latency:
                await self.clock.sleep(self.latency)
            if self.failures:
                raise self.failures.pop(0)
            now = self.clock.now()
            n = len(self.calls)
            return sts.Credentials(
                access_key_id=f"ASIA{n:016d}",
                secret_access_key=pydantic.SecretStr(f"secret-{n}"),
                session_token=pydantic.SecretStr(f"token-{n}"),
                expiration=now + datetime.timedelta(seconds=request.duration),
                issued=now,
            )
        finally:
            self.in_flight -= 1

    async def caller_identity(self) -> tuple[str, str]:
        return "arn:aws:sts::123456789012:assumed-role/node/i-1", "123456789012"


def throttled() -> sts.StsError:
    return sts.StsError("Throttling", "Rate exceeded", retryable=True, status=400)


def denied() -> sts.StsError:
    return sts.StsError("AccessDenied", "not authorized", retryable=False, status=403)


def cache_for(clock: clocks.Clock, source: FakeSource, **kwargs: object) -> sts.CredentialCache:
    return sts.CredentialCache(source, clock, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


async def test_concurrent_demands_make_one_call() -> None:
    clock = FakeClock(autoadvance=True)
    source = FakeSource(clock)
    source.gate = asyncio.Event()
    cache = cache_for(clock, source)
    waiters = [asyncio.ensure_future(cache.get("k", REQUEST)) for _ in range(100)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*waiters)
    assert len(source.calls) == 1
    assert len({r.access_key_id for r in results}) == 1
    await cache.get("k", REQUEST)
    assert len(source.calls) == 1  # cached


async def test_concurrency_is_bounded() -> None:
    clock = FakeClock(autoadvance=True)
    source = FakeSource(clock)
    source.gate = asyncio.Event()
    cache = cache_for(clock, source, concurrency=3)
    waiters = [asyncio.ensure_future(cache.get(f"k{i}", sts.AssumeRequest(f"{ARN}{i}", "podiam", 3600))) for i in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert source.in_flight == 3
    source.gate.set()
    await asyncio.gather(*waiters)
    assert source.max_in_flight == 3 and len(source.calls) == 10


async def test_throttling_is_retried_with_backoff_and_jitter() -> None:
    clock = FakeClock(autoadvance=True)
    source = FakeSource(clock)
    source.failures = [throttled(), throttled(), throttled()]
    cache = cache_for(clock, source, attempts=5, retry_base=0.2, retry_cap=10.0)
    credentials = await cache.get("k", REQUEST)
    assert credentials.access_key_id and len(source.calls) == 4
    # Full jitter: each wait within [0, base * 2^n].
    assert len(clock.slept) == 3
    for n, slept in enumerate(clock.slept):
        assert 0 <= slept <= 0.2 * 2**n


async def test_retries_give_up_after_the_attempts() -> None:
    clock = FakeClock(autoadvance=True)
    source = FakeSource(clock)
    source.failures = [throttled() for _ in range(10)]
    cache = cache_for(clock, source, attempts=3)
    with pytest.raises(sts.StsError, match="Throttling"):
        await cache.get("k", REQUEST)
    assert len(source.calls) == 3


async def test_access_denied_fails_at_once_and_is_retried_later_only() -> None:
    clock = FakeClock(autoadvance=True)
    source = FakeSource(clock)
    source.failures = [denied()]
    cache = cache_for(clock, source, failure_retry_base=5.0)
    with pytest.raises(sts.StsError) as error:
        await cache.get("k", REQUEST)
    assert error.value.code == "AccessDenied" and len(source.calls) == 1
    state = cache.state("k")
    assert (state.state, state.reason) == ("failed", "AccessDenied")
    assert ARN in state.message
    with pytest.raises(sts.StsError):
        await cache.get("k", REQUEST)  # not yet due: no new call
    assert len(source.calls) == 1
    due = cache.next_due()
    assert due is not None and 2.5 <= (due - clock.now()).total_seconds() <= 5.0
    # Another role is unaffected.
    other = await cache.get("other", sts.AssumeRequest(ARN + "2", "podiam", 3600))
    assert other.access_key_id


async def test_secrets_stay_out_of_reprs() -> None:
    clock = FakeClock(autoadvance=True)
    credentials = await cache_for(clock, FakeSource(clock)).get("k", REQUEST)
    assert "secret-" not in repr(credentials) and "token-" not in repr(credentials)


async def refresher_run(clock: FakeClock, cache: sts.CredentialCache, hours: float, pushed: list[tuple[datetime.datetime, sts.Credentials]]) -> None:
    async def on_result(key: str, credentials: sts.Credentials | None, error: sts.StsError | None) -> None:
        usable = cache.usable(key)
        if usable is not None:
            pushed.append((clock.now(), usable))

    task = asyncio.ensure_future(cache.run_refresher(lambda key: True, on_result))
    end = clock.now() + datetime.timedelta(hours=hours)
    while clock.now() < end:
        await clock.advance(30)
        # What a snapshot to a restarting proxy would carry at this moment:
        usable = cache.usable("k")
        if usable is not None:
            pushed.append((clock.now(), usable))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_refresh_at_half_life_keeps_more_than_20_minutes() -> None:
    clock = FakeClock()
    source = FakeSource(clock)
    cache = cache_for(clock, source, refresh_point=0.5, min_remaining=20 * 60)
    first = await cache.get("k", REQUEST)
    pushed = [(clock.now(), first)]
    await refresher_run(clock, cache, 6, pushed)
    # Renewed every 30 minutes: 12 renewals in 6 hours, plus the first call.
    assert 12 <= len(source.calls) <= 13
    remaining = [c.remaining(at) for at, c in pushed]
    assert min(remaining) > 20 * 60
    assert min(remaining) >= 29 * 60  # refreshed at half-life, so ~30 min is the low point


async def test_sts_outage_never_pushes_credentials_below_the_floor() -> None:
    clock = FakeClock()
    source = FakeSource(clock)
    cache = cache_for(clock, source, refresh_point=0.5, min_remaining=20 * 60, failure_retry_base=30, failure_retry_max=120)
    await cache.get("k", REQUEST)
    # STS answers nothing but 503s for the next 45 minutes' worth of calls.
    source.failures = [sts.StsError("ServiceUnavailable", "down", retryable=True, status=503) for _ in range(200)]
    pushed: list[tuple[datetime.datetime, sts.Credentials]] = []
    await refresher_run(clock, cache, 1.5, pushed)
    assert pushed, "nothing was pushable at any time"
    assert all(c.remaining(at) > 20 * 60 for at, c in pushed)
    # During the outage the usable set ran out (below 20 min) rather than being pushed stale.
    assert cache.usable("k") is None or cache.usable("k").remaining(clock.now()) > 20 * 60  # type: ignore[union-attr]


async def test_unused_keys_are_not_renewed() -> None:
    clock = FakeClock()
    source = FakeSource(clock)
    cache = cache_for(clock, source)
    await cache.get("k", REQUEST)

    async def on_result(*_: object) -> None:
        pass

    task = asyncio.ensure_future(cache.run_refresher(lambda key: False, on_result))
    await clock.advance(3600)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(source.calls) == 1 and len(cache) == 0


def request_for(role: str) -> sts.AssumeRequest:
    return sts.AssumeRequest(f"arn:aws:iam::123456789012:role/{role}", "podiam", 3600)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_namespace_past_its_budget_waits_and_others_do_not() -> None:
    clock = FakeClock()
    source = FakeSource(clock)
    cache = cache_for(clock, source, namespace_burst=2, namespace_rate=0.5)
    greedy = [asyncio.ensure_future(cache.get(f"g{i}", request_for(f"g{i}"), frozenset({"greedy"}))) for i in range(5)]
    await settle()
    assert len(source.calls) == 2
    waiting = [cache.state(f"g{i}") for i in range(2, 5)]
    assert {s.reason for s in waiting} == {"StsBudget"}
    assert "namespace greedy has spent its STS budget (2 calls, then 0.5 a second)" in waiting[0].message
    # Another namespace's call goes at once.
    await cache.get("v", request_for("v"), frozenset({"victim"}))
    assert source.calls[-1].role_arn.endswith("/v")
    # A credential set the greedy namespace shares with another one is paid by the other.
    await cache.get("shared", request_for("shared"), frozenset({"greedy", "other"}))
    await clock.advance(2.0)
    assert len(source.calls) == 5
    await clock.advance(4.0)
    await asyncio.gather(*greedy)
    assert len(source.calls) == 7


async def test_renewals_go_before_first_fetches() -> None:
    clock = FakeClock()
    source = FakeSource(clock)
    cache = cache_for(clock, source, concurrency=1)
    await cache.get("renewed", request_for("renewed"), frozenset({"a"}))
    source.gate = asyncio.Event()
    blocker = asyncio.ensure_future(cache.get("blocker", request_for("blocker"), frozenset({"c"})))
    await settle()
    first_fetches = [asyncio.ensure_future(cache.get(f"new{i}", request_for(f"new{i}"), frozenset({"b"}))) for i in range(3)]
    await settle()
    renewal = asyncio.ensure_future(cache.refresh("renewed", request_for("renewed"), frozenset({"a"})))
    await settle()
    source.gate.set()
    await asyncio.gather(blocker, renewal, *first_fetches)
    assert [c.role_arn.rpartition("/")[2] for c in source.calls[1:3]] == ["blocker", "renewed"]


async def test_a_forgotten_key_leaves_the_queue() -> None:
    clock = FakeClock()
    source = FakeSource(clock)
    cache = cache_for(clock, source, namespace_burst=1, namespace_rate=0.01)
    await cache.get("first", request_for("first"), frozenset({"a"}))
    waiting = asyncio.ensure_future(cache.get("second", request_for("second"), frozenset({"a"})))
    await settle()
    assert len(cache.dispatcher.share) == 1
    cache.forget("second")
    await settle()
    assert len(cache.dispatcher.share) == 0 and waiting.done()
    assert len(source.calls) == 1
