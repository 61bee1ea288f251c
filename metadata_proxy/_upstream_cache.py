"""The node's metadata service behind a short cache: pods cannot drive its request rate.

Each path's answer (200 or 404) is kept for ``ttl`` seconds; while a request
for a path is on its way, others for that path wait for its answer instead
of sending their own; and requests that do go out take a token from one
bucket (``rate`` a second, ``burst`` at once). With the bucket empty, a pod
gets the path's last answer if there is one, else 429, which is what EC2's
metadata service answers a client asking too fast (SDKs retry it).
Everything that reaches the node's service goes through here: the
allow-listed paths and the operator's own pods' ``iam/`` paths.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from metadata_proxy import _metrics, _upstream

CACHED_STATUSES = (200, 404)
MAX_ENTRIES = 256  # paths kept; an allow-list wide enough for more gets its oldest dropped


class Throttled(Exception):
    """Nothing cached for the path, and no token left to ask for it."""


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    answer: _upstream.UpstreamResponse
    fresh_until: float


class CachedUpstream:
    def __init__(
        self,
        upstream: _upstream.Upstream,
        ttl: float,
        bucket: TokenBucket,
        metrics: _metrics.Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstream = upstream
        self._ttl = ttl
        self._bucket = bucket
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._flights: dict[str, asyncio.Future[_upstream.UpstreamResponse]] = {}
        self._lookups = {result: metrics.upstream_cache.labels(result) for result in ("hit", "miss", "joined", "stale", "throttled")}
        self._sent = metrics.upstream

    async def start(self) -> None:
        await self._upstream.start()

    async def close(self) -> None:
        await self._upstream.close()

    async def get(self, path: str) -> _upstream.UpstreamResponse:
        """The answer for ``path``; UpstreamError or Throttled when there is none."""
        entry = self._entries.get(path)
        if entry is not None and self._clock() < entry.fresh_until:
            self._lookups["hit"].inc()
            return entry.answer
        flight = self._flights.get(path)
        if flight is not None:
            self._lookups["joined"].inc()
        elif not self._bucket.take():
            if entry is None:
                self._lookups["throttled"].inc()
                raise Throttled(path)
            self._lookups["stale"].inc()
            return entry.answer
        else:
            self._lookups["miss"].inc()
            flight = self._flights[path] = asyncio.ensure_future(self._fetch(path))
        # Shielded: a pod that hangs up does not cancel the request the others wait for.
        return await asyncio.shield(flight)

    async def _fetch(self, path: str) -> _upstream.UpstreamResponse:
        try:
            answer = await self._upstream.get(path)
        except _upstream.UpstreamError:
            self._sent.labels("error").inc()
            raise
        finally:
            del self._flights[path]
        self._sent.labels(str(answer.status)).inc()
        if answer.status in CACHED_STATUSES:
            self._entries.pop(path, None)  # re-inserted last: the oldest entry is first
            self._entries[path] = _Entry(answer, self._clock() + self._ttl)
            if len(self._entries) > MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
        return answer
