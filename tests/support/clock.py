"""A clock for tests: time moves only when told, or by itself on every sleep; it satisfies ``_kits.clock.Clock``."""

from __future__ import annotations

import asyncio
import datetime
import heapq
import itertools


class FakeClock:
    """A clock that moves only when told (``advance``), or by itself on every sleep (``autoadvance``)."""

    def __init__(self, start: datetime.datetime | None = None, *, autoadvance: bool = False) -> None:
        self._now = start or datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
        self.autoadvance = autoadvance
        self.slept: list[float] = []
        self._sleepers: list[tuple[datetime.datetime, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> datetime.datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        if self.autoadvance:
            self._now += datetime.timedelta(seconds=seconds)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + datetime.timedelta(seconds=seconds), next(self._counter), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper due, in order; lets woken tasks run."""
        target = self._now + datetime.timedelta(seconds=seconds)
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not future.done():
                future.set_result(None)
            for _ in range(5):
                await asyncio.sleep(0)
        self._now = target
        for _ in range(5):
            await asyncio.sleep(0)
