"""The engine's own watches: resumed from the version reached, listed again (deletions included) after 410 Gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from podiam_operator._core import decide, roles, world
from podiam_operator._engine import watches
from podiam_operator._kits import kube as kubes
from podiam_operator._kits import retries
from tests.unit.operator.conftest import pod

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retries, "API_LOW", 0.01)


def body(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "team", "name": name, "uid": f"uid-{name}", "resourceVersion": version}}


class Script:
    """A source that answers each watch and list call with the next scripted step (then waits forever)."""

    def __init__(self, watch_steps: list[Any], lists: list[tuple[list[dict[str, Any]], str]]) -> None:
        self.watch_steps = watch_steps
        self.lists = lists
        self.watched_from: list[str] = []

    async def list_all(self, kind: str, versions: dict[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
        items, version = self.lists.pop(0)
        for item in items:
            yield item
        if versions is not None:
            versions[kind] = version

    async def watch(self, kind: str, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watched_from.append(resource_version)
        if not self.watch_steps:
            await asyncio.Event().wait()
        step = self.watch_steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        for event in step:
            yield event


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str | None, str]] = []

    def changed(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        self.changes.append((event_type, body["metadata"]["name"]))


def held_world(*names: str) -> world.World:
    model = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"))
    for name in names:
        model.set_pod(pod(name=name, node="n1", ip=None))
    return model


async def run_until(follow: Any, done: Any) -> None:
    task = asyncio.ensure_future(follow)
    try:
        for _ in range(200):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not done")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_each_watch_resumes_from_the_version_reached_bookmarks_included() -> None:
    source = Script([[("ADDED", body("a", "11")), ("BOOKMARK", {"metadata": {"resourceVersion": "15"}})],
                     [("MODIFIED", body("a", "16"))]], [])
    sink = Recorder()
    follower = watches.Watches(source, sink, held_world(), {"pods": "10"})
    await run_until(follower.follow("pods"), lambda: len(source.watched_from) == 3)
    assert source.watched_from == ["10", "15", "16"]
    assert sink.changes == [("ADDED", "a"), ("MODIFIED", "a")]  # a bookmark is no change


async def test_gone_lists_again_and_what_the_listing_lacks_is_deleted() -> None:
    model = held_world("kept", "deleted-meanwhile")
    source = Script([kubes.Gone("pods at resourceVersion 10")], [([body("kept", "30"), body("new", "31")], "40")])
    sink = Recorder()
    follower = watches.Watches(source, sink, model, {"pods": "10"})
    await run_until(follower.follow("pods"), lambda: len(source.watched_from) == 2)
    assert source.watched_from == ["10", "40"]  # the listing's version, not an item's
    assert sink.changes == [(None, "kept"), (None, "new"), ("DELETED", "deleted-meanwhile")]


async def test_other_failures_retry_from_the_same_version() -> None:
    source = Script([ConnectionResetError("the API server went away"), []], [])
    follower = watches.Watches(source, Recorder(), held_world(), {"pods": "10"})
    await run_until(follower.follow("pods"), lambda: len(source.watched_from) == 3)
    assert source.watched_from == ["10", "10", "10"]
