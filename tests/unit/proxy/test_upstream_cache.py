"""The node's metadata service behind the cache: one request per path and TTL, one at a time, within the bucket.

The upstream is a real aiohttp server on loopback that counts what it is asked;
the clock is the test's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from metadata_proxy import _metrics, _upstream, _upstream_cache
from tests.unit.proxy.conftest import Clock

pytestmark = pytest.mark.unit

REGION = "/latest/meta-data/placement/region"


class Upstream:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.status = 200
        self.release = asyncio.Event()
        self.release.set()

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "PUT":
            return web.Response(text="node-token")
        self.asked.append(request.path)
        await self.release.wait()
        return web.Response(status=self.status, text=f"answer to {request.path}")


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    state = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    return state, await aiohttp_server(app)


@pytest.fixture
async def cached(upstream: tuple[Upstream, TestServer], clock: Clock, metrics: _metrics.Metrics) -> Any:
    _, server = upstream
    bucket = _upstream_cache.TokenBucket(rate=1, burst=3, clock=clock)
    cache = _upstream_cache.CachedUpstream(_upstream.Upstream(str(server.make_url("")), 2), ttl=2, bucket=bucket,
                                           metrics=metrics, clock=clock)
    await cache.start()
    yield cache
    await cache.close()


def lookups(metrics: _metrics.Metrics, result: str) -> float:
    return metrics.upstream_cache.labels(result)._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_concurrent_requests_for_a_path_share_one_and_its_answer_is_kept_for_the_ttl(
    cached: _upstream_cache.CachedUpstream, upstream: tuple[Upstream, TestServer], clock: Clock, metrics: _metrics.Metrics,
) -> None:
    state, _ = upstream
    state.release.clear()
    waiting = [asyncio.ensure_future(cached.get(REGION)) for _ in range(12)]
    await asyncio.sleep(0.1)
    state.release.set()
    answers = await asyncio.gather(*waiting)
    assert {(a.status, a.body) for a in answers} == {(200, f"answer to {REGION}".encode())}
    assert state.asked == [REGION]
    assert (lookups(metrics, "miss"), lookups(metrics, "joined")) == (1, 11)
    clock.now += 1.9
    await cached.get(REGION)
    assert state.asked == [REGION] and lookups(metrics, "hit") == 1
    clock.now += 0.2
    await cached.get(REGION)
    assert state.asked == [REGION, REGION]


async def test_the_bucket_bounds_what_goes_upstream_and_the_last_answer_stands_in(
    cached: _upstream_cache.CachedUpstream, upstream: tuple[Upstream, TestServer], clock: Clock, metrics: _metrics.Metrics,
) -> None:
    state, _ = upstream
    for i in range(3):  # the burst
        await cached.get(f"/p{i}")
    with pytest.raises(_upstream_cache.Throttled):
        await cached.get("/p3")
    clock.now += 5  # every answer stale now, and the bucket full again (3)
    for i in range(3):
        await cached.get(f"/p{i}")
    assert (await cached.get("/p0")).body == b"answer to /p0"  # fresh again: a hit
    clock.now += 2.5  # stale again; 2 tokens back
    await cached.get("/p0")
    await cached.get("/p1")
    answer = await cached.get("/p2")  # no token: its last answer
    assert answer.body == b"answer to /p2"
    assert lookups(metrics, "stale") == 1 and lookups(metrics, "throttled") == 1
    assert len(state.asked) == 8


async def test_errors_and_other_statuses_are_not_kept(
    cached: _upstream_cache.CachedUpstream, upstream: tuple[Upstream, TestServer], clock: Clock,
) -> None:
    state, _ = upstream
    state.status = 500
    assert (await cached.get(REGION)).status == 500
    assert (await cached.get(REGION)).status == 500
    assert state.asked == [REGION, REGION]
    state.status = 404
    assert (await cached.get(REGION)).status == 404
    assert (await cached.get(REGION)).status == 404  # a 404 is an answer: kept
    assert len(state.asked) == 3


async def test_an_unreachable_upstream_fails_every_waiter_of_the_request(clock: Clock, metrics: _metrics.Metrics) -> None:
    bucket = _upstream_cache.TokenBucket(rate=1, burst=3, clock=clock)
    cache = _upstream_cache.CachedUpstream(_upstream.Upstream("http://127.0.0.1:9", 1), ttl=2, bucket=bucket, metrics=metrics, clock=clock)
    await cache.start()
    try:
        results = await asyncio.gather(*(cache.get(REGION) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, _upstream.UpstreamError) for r in results)
        assert lookups(metrics, "miss") == 1
        assert metrics.upstream.labels("error")._value.get() == 1  # type: ignore[attr-defined]
    finally:
        await cache.close()
