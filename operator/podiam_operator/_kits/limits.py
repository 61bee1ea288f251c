"""A concurrency bound whose cost does not grow with the number of waiters.

``asyncio.Semaphore`` (Python 3.11) looks at every waiter on each acquire, so
thousands of tasks queued on one (a snapshot for each of 5,000 proxies after a
takeover) cost time quadratic in their number; this one is O(1) per acquire.
"""

from __future__ import annotations

import asyncio
import collections


class Limiter:
    """At most ``limit`` holders at once; waiters are served first come, first served."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we were cancelled: pass it on
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        # The slot goes straight to the next live waiter (cancelled ones are skipped), else back to the pool.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
