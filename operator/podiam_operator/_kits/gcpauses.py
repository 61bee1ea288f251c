"""The garbage collector's pauses: measured, and the largest kept out of the operator's way.

CPython's full (generation 2) collection walks every container object the
process holds, with the event loop stopped: every watch event, push and probe
waits. With the picture of a 50,000-pod cluster that is millions of objects
and about a second, several times a minute while pods start (a collection
comes each time the objects made since the last one reach a quarter of those
it walked then).

- ``watch()``: each collection's pause goes to a histogram, and a long one
  to the log with its generation.
- ``freeze()``: once the starting picture is held, one full collection, then
  ``gc.freeze()`` takes what survived (the picture, the pushers, the clients)
  out of the collector's sight, so later collections walk only what was made
  since. Frozen objects are still freed by reference counting when dropped;
  only a reference cycle among them would never be collected, and the
  picture's objects (dataclasses of strings, dicts of them) form none.
"""

from __future__ import annotations

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

_started: float | None = None


def _callback(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    if _started is None:
        return
    paused, _started = time.perf_counter() - _started, None
    PAUSES.labels(str(info["generation"])).observe(paused)
    if paused >= LOGGED:
        logger.info("garbage collection (generation %d) stopped the operator for %.2f s", info["generation"], paused)


def watch() -> None:
    """Measure every collection from now on (idempotent)."""
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)


def freeze() -> None:
    """Everything alive now, out of later collections' walk (see the module's docstring)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    logger.info("%d objects frozen out of garbage collection in %.2f s", gc.get_freeze_count(), time.perf_counter() - started)
