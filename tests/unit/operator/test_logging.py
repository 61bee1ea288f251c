"""What the operator logs at each level: kopf's line per handled event only at debug."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from podiam_operator import __main__ as entry
from podiam_operator import _settings

pytestmark = pytest.mark.unit

_KEPT = ("", "kopf.objects", "aiobotocore", "botocore", "urllib3", "aiohttp.access", "kubernetes_asyncio")


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in _KEPT}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


@pytest.mark.parametrize("level", ["info", "warning"])
def test_kopf_says_nothing_per_event_below_debug(level: str) -> None:
    entry._configure_logging(_settings.from_argv(["--log-level", level]))
    objects = logging.getLogger("kopf.objects")
    assert not objects.isEnabledFor(logging.INFO)  # "Handler 'pod_event' succeeded." for every event
    assert objects.isEnabledFor(logging.WARNING)  # a handler's failure is always said
    assert logging.getLogger("podiam_operator.handlers").isEnabledFor(logging.getLevelName(level.upper()))


def test_debug_shows_kopf_per_event() -> None:
    entry._configure_logging(_settings.from_argv(["--log-level", "debug"]))
    assert logging.getLogger("kopf.objects").isEnabledFor(logging.DEBUG)
