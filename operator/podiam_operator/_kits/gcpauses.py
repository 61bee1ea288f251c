"""The garbage collector's pauses: measured, and kept short.

CPython's full (generation 2) collection walks every container object the
process holds, with the event loop stopped: every watch event, push and probe
waits. Measured in bench.scale at 50,000 pods on 5,000 nodes, those pauses
grew with the picture to 1.3 s, several a minute while pods started: they
were the grant latency's tail. So:

- ``watch()``: each collection's pause goes to a histogram, and one of
  ``LOGGED`` seconds or more to the log with its generation.
- ``start_freezing()``, once the starting picture is held: from then on,
  whatever survives a full collection is frozen (``gc.freeze()``), out of
  later collections' walk, so each full collection walks only what became
  long-lived since the one before. Frozen objects are still freed by
  reference counting; only garbage in reference cycles among them waits:
- ``collect_thoroughly()`` unfreezes everything and collects it all every
  ``THOROUGH_EVERY`` seconds: one long pause an hour instead of several a
  minute, and no cycle outlives it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import prometheus_client

logger = logging.getLogger(__name__)

PAUSES = prometheus_client.Histogram(
    "podiam_operator_gc_pause_seconds", "Garbage collections by generation, and how long each stopped the operator",
    ["generation"], buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LOGGED = 0.25  # seconds: a pause this long delays pushes visibly (the grant goal is 1 s)
THOROUGH_EVERY = 3600.0  # seconds between collections of everything, the frozen objects included

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
    if _freezing and info["generation"] == 2:
        gc.freeze()  # what survived: reachable now, so no garbage goes in with it
    PAUSES.labels(str(info["generation"])).observe(paused)
    if paused >= LOGGED:
        logger.info("garbage collection (generation %d) stopped the operator for %.2f s", info["generation"], paused)


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


async def collect_thoroughly(every: float = THOROUGH_EVERY) -> None:
    """Until cancelled: every ``every`` seconds, everything unfrozen and collected (then frozen again)."""
    while True:
        await asyncio.sleep(every)
        gc.unfreeze()
        gc.collect()
