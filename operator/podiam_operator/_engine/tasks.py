"""The engine's background tasks: named, their failures logged, all cancelled when it closes."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

# API writes in flight at once, for each job that makes them (statuses, pod-owned bindings): enough
# that 100 pod starts a second keep their bindings current while each write takes ~100 ms under load.
WRITE_CONCURRENCY = 24
K = TypeVar("K", bound=Hashable)


class Tasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class KeyedWork(Generic[K]):
    """Keys to process by ``concurrency`` workers, first marked first, each key by one worker at a time.

    A key marked again while it waits is processed once; marked while being
    processed, once more afterwards (it may have changed meanwhile). A mark is
    processed ``delay`` seconds after it was made at the earliest, so that a
    burst of changes to one key makes one write. Workers take keys as they
    come: a long batch never holds back a key marked after it.
    """

    def __init__(self, job: Callable[[K], Awaitable[None]], concurrency: int, delay: float = 0.0) -> None:
        self._job = job
        self._concurrency = concurrency
        self._delay = delay
        self._pending: collections.OrderedDict[K, float] = collections.OrderedDict()  # key -> when marked
        self._busy: set[K] = set()
        self._again: set[K] = set()
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending) + len(self._again)

    def mark(self, keys: Iterable[K]) -> None:
        now = time.monotonic()
        for key in keys:
            if key in self._busy:
                self._again.add(key)
            elif key not in self._pending:
                self._pending[key] = now
        if self._pending:
            self._wakeup.set()

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self._concurrency)))

    async def _worker(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            key, marked = self._pending.popitem(last=False)
            self._busy.add(key)
            try:
                wait = marked + self._delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._job(key)
            except Exception:
                logger.exception("processing %s failed", key)
            finally:
                self._busy.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.mark([key])
