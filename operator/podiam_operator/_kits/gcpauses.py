"""The garbage collector's pauses: measured, and kept short.

CPython's full (generation 2) collection walks every container object the
process holds, with the event loop stopped: every watch event, push and probe
waits. Measured in bench.scale at 50,000 pods on 5,000 nodes, those pauses
grew with the picture to 1.3 s, several a minute while pods started: they
were the grant latency's tail. So:

- ``watch()``: each collection's pause is counted for
  ``podiam_operator_gc_pause_seconds``, and ``tend()`` logs those of
  ``LOGGED`` seconds or more. The collector's callback runs inside whatever
  code allocated, so it takes no lock (a metric's or the logging module's
  may be held right there): it only counts into plain lists and queues.
- ``start_freezing()``, before the starting picture is listed: from then on,
  whatever survives a full collection is frozen (``gc.freeze()``), out of
  later collections' walk, so each full collection walks only what became
  long-lived since the one before. Frozen objects are still freed by
  reference counting; only garbage in reference cycles among them waits:
- ``tend()`` also unfreezes everything and collects it all every
  ``THOROUGH_EVERY`` seconds: one long pause an hour instead of several a
  minute, and no dead cycle outlives it.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import gc
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import prometheus_client
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

BOUNDS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # the histogram's buckets, in seconds
LOGGED = 0.25  # seconds: a pause this long delays pushes visibly (the grant goal is 1 s)
THOROUGH_EVERY = 3600.0  # seconds between collections of everything, the frozen objects included
REPORT_EVERY = 1.0  # seconds between looks at the long pauses to log

_GENERATIONS = 3
_in_bucket = [[0] * (len(BOUNDS) + 1) for _ in range(_GENERATIONS)]  # per generation; the last: above BOUNDS
_seconds = [0.0] * _GENERATIONS
_long: collections.deque[tuple[int, float]] = collections.deque(maxlen=100)  # (generation, seconds), to log
_started: float | None = None
_freezing = False


def _callback(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    if _started is None:
        return
    paused, _started = time.perf_counter() - _started, None
    generation = info["generation"]
    if _freezing and generation == _GENERATIONS - 1:
        gc.freeze()  # what survived: reachable now, so no garbage goes in with it
    _in_bucket[generation][bisect.bisect_left(BOUNDS, paused)] += 1
    _seconds[generation] += paused
    if paused >= LOGGED:
        _long.append((generation, paused))


class _Pauses(Collector):
    """``podiam_operator_gc_pause_seconds{generation}``, read from the callback's counts at each scrape."""

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily("podiam_operator_gc_pause_seconds",
                                       "Garbage collections by generation, and how long each stopped the operator",
                                       labels=["generation"])
        for generation in range(_GENERATIONS):
            cumulative = list(itertools.accumulate(_in_bucket[generation]))
            buckets = [(str(bound), float(count)) for bound, count in zip(BOUNDS, cumulative)]
            family.add_metric([str(generation)], [*buckets, ("+Inf", float(cumulative[-1]))], _seconds[generation])
        yield family


prometheus_client.REGISTRY.register(_Pauses())


def watch() -> None:
    """Measure every collection from now on (idempotent)."""
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)


def start_freezing() -> None:
    """From now on, what survives each full collection is frozen; one full collection now."""
    global _freezing
    watch()
    _freezing = True
    gc.collect()
    logger.info("%d objects frozen out of garbage collection", gc.get_freeze_count())


def report() -> None:
    """The long pauses since the last report, one log line each."""
    while _long:
        generation, paused = _long.popleft()
        logger.info("garbage collection (generation %d) stopped the operator for %.2f s", generation, paused)


async def tend(thorough_every: float = THOROUGH_EVERY) -> None:
    """Until cancelled: long pauses reported, and every ``thorough_every`` seconds everything unfrozen and
    collected (then frozen again)."""
    thorough_at = time.monotonic() + thorough_every
    while True:
        await asyncio.sleep(min(REPORT_EVERY, thorough_every))
        if time.monotonic() >= thorough_at:
            gc.unfreeze()
            gc.collect()
            thorough_at = time.monotonic() + thorough_every
        report()
