"""The garbage collector's pauses: measured from the real collector, logged when long; survivors of full
collections frozen, and everything collected again now and then."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Iterator

import prometheus_client
import pytest

from podiam_operator._kits import gcpauses

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def restore_collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    callbacks = list(gc.callbacks)
    monkeypatch.setattr(gcpauses, "_freezing", False)
    yield
    gc.callbacks[:] = callbacks
    gc.unfreeze()


def _scraped(suffix: str, generation: str, le: str | None = None) -> float:
    labels = {"generation": generation} | ({"le": le} if le is not None else {})
    value = prometheus_client.REGISTRY.get_sample_value(f"podiam_operator_gc_pause_seconds{suffix}", labels)
    assert value is not None
    return value


def test_each_collection_is_measured_once_and_scraped_as_a_histogram() -> None:
    gcpauses.watch()
    gcpauses.watch()
    assert gc.callbacks.count(gcpauses._callback) == 1
    before = _scraped("_count", "2")
    gc.collect()
    assert _scraped("_count", "2") == before + 1
    assert _scraped("_bucket", "2", "+Inf") == _scraped("_count", "2")
    assert _scraped("_bucket", "2", "0.001") <= _scraped("_bucket", "2", "5.0") <= _scraped("_count", "2")
    assert _scraped("_sum", "2") > 0


def test_a_long_pause_is_logged_with_its_generation_outside_the_callback(monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    instants = iter([10.0, 10.0 + gcpauses.LOGGED + 0.5, 20.0, 20.01])
    monkeypatch.setattr(gcpauses.time, "perf_counter", lambda: next(instants))
    slow_before = _scraped("_bucket", "2", "+Inf") - _scraped("_bucket", "2", "0.5")
    with caplog.at_level(logging.INFO, logger=gcpauses.__name__):
        gcpauses._callback("start", {"generation": 2})
        gcpauses._callback("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        gcpauses._callback("start", {"generation": 0})
        gcpauses._callback("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
        assert caplog.records == [], "the callback itself logs nothing"
        gcpauses.report()
    assert [r.getMessage() for r in caplog.records] == ["garbage collection (generation 2) stopped the operator for 0.75 s"]
    assert _scraped("_bucket", "2", "+Inf") - _scraped("_bucket", "2", "0.5") == slow_before + 1, "in the 1.0 s bucket"


def _walked() -> set[int]:
    return {id(found) for generation in range(3) for found in gc.get_objects(generation)}


def test_what_survives_each_full_collection_is_frozen() -> None:
    gcpauses.start_freezing()
    held = [{"pod": str(n), "containers": [str(n)]} for n in range(1000)]  # tracked: they hold a list
    assert all(gc.is_tracked(entry) for entry in held)
    assert any(id(entry) in _walked() for entry in held), "not frozen before a full collection"
    gc.collect(1)
    assert any(id(entry) in _walked() for entry in held), "nor after a younger one"
    gc.collect()
    assert not any(id(entry) in _walked() for entry in held)
    assert gc.get_freeze_count() >= len(held)


async def test_a_thorough_collection_frees_cycles_that_died_frozen() -> None:
    class Node:
        other: Node | None = None

    gcpauses.start_freezing()
    first, second = Node(), Node()
    first.other, second.other = second, first
    gc.collect()  # frozen with the rest
    died = weakref.ref(first)
    del first, second
    gc.collect()
    assert died() is not None, "a frozen cycle is not collected"
    tending = asyncio.create_task(gcpauses.tend(thorough_every=0.01))
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if died() is None:
                break
    finally:
        tending.cancel()
    assert died() is None
    assert gc.get_freeze_count() > 0, "frozen again after the thorough collection"
