"""Kube.list_all: pages in order, the next asked for before this one's objects are handed out, a refusal with its
status and message, and nothing left running when the caller stops early."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from podiam_operator._kits import kube as kubes

pytestmark = pytest.mark.unit


class Response:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self._payload = json.dumps(body).encode()

    async def read(self) -> bytes:
        return self._payload

    def release(self) -> None:
        pass


class Pages:
    """A lister serving ``pages`` (each a list of names) with continue tokens, recording each request."""

    def __init__(self, pages: list[list[str]], *, hold: asyncio.Event | None = None, status: int = 200) -> None:
        self.pages = pages
        self.asked: list[str | None] = []
        self.hold = hold
        self.status = status

    async def __call__(self, **extra: Any) -> Response:
        token = extra.get("_continue")
        self.asked.append(token)
        if self.status != 200:
            return Response(self.status, {"kind": "Status", "message": "pods is forbidden"})
        number = int(token) if token else 0
        if number > 0 and self.hold is not None:
            await self.hold.wait()
        meta = {"resourceVersion": "42"} | ({"continue": str(number + 1)} if number + 1 < len(self.pages) else {})
        return Response(200, {"metadata": meta, "items": [{"metadata": {"name": name}} for name in self.pages[number]]})


def _kube(lister: Pages) -> kubes.Kube:
    made = kubes.Kube(api=object())  # type: ignore[arg-type]  # never used: the lister is replaced
    made._lister = lambda kind: lister  # type: ignore[method-assign]
    return made


async def test_every_page_in_order_and_the_listing_version() -> None:
    lister = Pages([["a", "b"], ["c"], ["d", "e"]])
    versions: dict[str, str] = {}
    names = [item["metadata"]["name"] async for item in _kube(lister).list_all("pods", versions)]
    assert names == ["a", "b", "c", "d", "e"]
    assert lister.asked == [None, "1", "2"]
    assert versions == {"pods": "42"}


async def test_the_next_page_is_asked_for_before_this_ones_objects_are_handed_out() -> None:
    lister = Pages([["a", "b"], ["c"]])
    listing = _kube(lister).list_all("pods")
    assert (await anext(listing))["metadata"]["name"] == "a"
    await asyncio.sleep(0)
    assert lister.asked == [None, "1"]
    await listing.aclose()


async def test_a_caller_that_stops_leaves_no_request_running() -> None:
    hold = asyncio.Event()
    lister = Pages([["a"], ["b"]], hold=hold)
    listing = _kube(lister).list_all("pods")
    await anext(listing)
    await asyncio.sleep(0)
    running = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert running, "the next page's request"
    await listing.aclose()
    await asyncio.sleep(0)
    assert all(task.done() for task in running)


async def test_a_refusal_says_its_status_and_the_api_servers_message() -> None:
    with pytest.raises(kubes.Refused, match=r"^listing pods: HTTP 403: pods is forbidden$"):
        async for _ in _kube(Pages([["a"]], status=403)).list_all("pods"):
            pass
