"""The credential cache with a fake STS source and an injected clock: no sleeping, no network."""

from __future__ import annotations

import asyncio
import datetime
import json
import random
from typing import Any

import pydantic
import pytest

from metadata_proxy import wire
from podiam_operator._core import decide, facts, roles, world
from podiam_operator._kits import clock as clocks
from podiam_operator._engine import supply
from podiam_operator._kits import push, sts
from tests.support.clock import FakeClock
from tests.unit.operator.conftest import namespace, pod

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


class Proxy:
    """The proxy's end of the push wire: every snapshot and changes body a node worker sends, with the fake time it went."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.bodies: list[tuple[datetime.datetime, str, dict[str, Any]]] = []  # (sent at, "snapshot" or "changes", body)

    async def request(self, method: str, url: str, body: bytes | None, kind: str, *, node: str = "") -> bytes:
        assert body is not None and kind in ("snapshot", "changes"), (method, kind)
        self.bodies.append((self.clock.now(), kind, json.loads(body)))
        return wire.Ack(applied=1).model_dump_json().encode()

    def roles_sent(self) -> list[tuple[datetime.datetime, str, dict[str, Any]]]:
        """Every credential set that went out: (sent at, kind, its wire form)."""
        return [(at, kind, role) for at, kind, body in self.bodies for role in body.get("roles" if kind == "snapshot" else "upsert_roles", [])]


def remaining_on_the_wire(sent_at: datetime.datetime, role: dict[str, Any]) -> float:
    return (datetime.datetime.fromisoformat(role["expiration"].replace("Z", "+00:00")) - sent_at).total_seconds()


async def pushing_run(cache: sts.CredentialCache, source: FakeSource, clock: FakeClock, hours: float, *,
                      failing: int = 0) -> Proxy:
    """One pod on node n1 using role R, its credentials fetched; then STS fails the next ``failing`` calls (503)
    while the refresher runs and, every 30 s, the node's worker sends what it would: a snapshot (as to a
    restarting proxy) and, 30 s later, changes. The credentials reach the worker as the operator hands them to
    it (NodeViews.credentials, from the cache). Returns what went out."""
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"))
    w.set_namespace(namespace("team", ".*"))
    w.set_pod(pod(name="a", node="n1", ip="10.0.0.1", role="R"))
    (key,) = w.desired_for_node("n1").keys
    await cache.get(key, sts.AssumeRequest.for_grant(w.grants[key]))
    source.failures = [sts.StsError("ServiceUnavailable", "down", retryable=True, status=503) for _ in range(failing)]
    credentials = supply.NodeViews(w, cache).credentials
    proxy = Proxy(clock)

    async def synced(node: str) -> None:
        pass

    worker = push.NodeWorker("n1", proxy, w.desired_for_node, credentials, synced, port=8182, anti_entropy=3600)  # type: ignore[arg-type]
    worker.set_proxy(facts.ProxyFacts(node="n1", pod_name="p", pod_uid="u", host_ip="127.0.0.10", running=True, ready=True, restarts=0))
    worker.full = True

    async def on_result(*_: object) -> None:
        pass

    task = asyncio.ensure_future(cache.run_refresher(lambda key: True, on_result))
    end = clock.now() + datetime.timedelta(hours=hours)
    tick = 0
    while clock.now() < end:
        await clock.advance(30)
        if tick % 2 == 0:
            await worker._snapshot()
        else:
            await worker._changes()
        tick += 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert source.calls[0].role_arn == "arn:aws:iam::123456789012:role/R"
    return proxy


async def test_refresh_at_half_life_keeps_more_than_20_minutes() -> None:
    clock = FakeClock()
    source = FakeSource(clock)
    cache = cache_for(clock, source, refresh_point=0.5, min_remaining=20 * 60)
    proxy = await pushing_run(cache, source, clock, 6)
    # Renewed every 30 minutes: 12 renewals in 6 hours, plus the first call.
    assert 12 <= len(source.calls) <= 13
    # Every snapshot carried the role, and every set that went out had about 30 minutes or more left.
    snapshots = [body for _, kind, body in proxy.bodies if kind == "snapshot"]
    assert len(snapshots) == 360 and all(len(body["roles"]) == 1 for body in snapshots)
    sent = proxy.roles_sent()
    assert min(remaining_on_the_wire(at, role) for at, _, role in sent) >= 29 * 60  # refreshed at half-life
    # The renewals went out as changes too (13 credential sets, each first as changes or in a snapshot).
    assert len({role["access_key_id"] for _, _, role in sent}) == len(source.calls)
    assert any(kind == "changes" for _, kind, _ in sent)


async def test_sts_outage_never_pushes_credentials_below_the_floor() -> None:
    clock = FakeClock()
    source = FakeSource(clock)
    cache = cache_for(clock, source, refresh_point=0.5, min_remaining=20 * 60, failure_retry_base=30, failure_retry_max=120)
    # After the first call STS answers nothing but 503s, for longer than the 1.5 hours run.
    proxy = await pushing_run(cache, source, clock, 1.5, failing=1000)
    assert len(source.calls) > 10 and source.failures, "the outage did not last the run"
    sent = proxy.roles_sent()
    assert sent, "nothing was pushed at any time"
    assert all(remaining_on_the_wire(at, role) > 20 * 60 for at, _, role in sent), \
        min(remaining_on_the_wire(at, role) for at, _, role in sent)
    # The credentials were pushed until their last 20 minutes began (40 minutes in), never after: from then
    # on every snapshot went out without the role or the pod using it.
    start = clock.now() - datetime.timedelta(hours=1.5)
    floor = start + datetime.timedelta(minutes=40)
    assert max(at for at, _, _ in sent) > floor - datetime.timedelta(minutes=1)
    after = [body for at, kind, body in proxy.bodies if kind == "snapshot" and at > floor]
    assert len(after) == 50 and all(body["roles"] == [] and body["pods"] == [] for body in after)  # one a minute


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
