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

    Keys marked ``background`` (every binding a new leader or new credentials
    touch) are taken only while no other key waits, so a change made meanwhile
    goes first, and not at all while held (:meth:`hold_background`).
    """

    def __init__(self, job: Callable[[K], Awaitable[None]], concurrency: int, delay: float = 0.0) -> None:
        self._job = job
        self._concurrency = concurrency
        self._delay = delay
        self._pending: collections.OrderedDict[K, float] = collections.OrderedDict()  # key -> when marked
        self._background: collections.OrderedDict[K, None] = collections.OrderedDict()
        self._busy: set[K] = set()
        self._again: set[K] = set()
        self._held = False
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending) + len(self._background) + len(self._again)

    def mark(self, keys: Iterable[K], *, background: bool = False) -> None:
        now = time.monotonic()
        for key in keys:
            if key in self._busy:
                self._again.add(key)
            elif key in self._pending:
                continue
            elif background:
                self._background[key] = None
            else:
                self._background.pop(key, None)
                self._pending[key] = now
        if self._ready():
            self._wakeup.set()

    def hold_background(self) -> None:
        self._held = True

    def release_background(self) -> None:
        self._held = False
        self._wakeup.set()

    def _ready(self) -> bool:
        return bool(self._pending) or (bool(self._background) and not self._held)

    def _next(self) -> tuple[K, float]:
        if self._pending:
            return self._pending.popitem(last=False)
        key, _ = self._background.popitem(last=False)
        return key, 0.0  # no delay: a background mark is no burst of changes

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self._concurrency)))

    async def _worker(self) -> None:
        while True:
            while not self._ready():
                self._wakeup.clear()
                await self._wakeup.wait()
            key, marked = self._next()
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
