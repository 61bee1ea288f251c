"""Retry: pauses doubling to a ceiling, a cause said once, and a success that starts over."""

from __future__ import annotations

import pytest

from podiam_operator._kits import retries

pytestmark = pytest.mark.unit


async def test_pauses_double_to_the_ceiling_and_start_over_after_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(retries.asyncio, "sleep", sleep)
    retry = retries.Retry(1.0, 5.0)
    for _ in range(5):
        await retry.pause()
    assert slept == [1.0, 2.0, 4.0, 5.0, 5.0]
    retry.succeeded()
    await retry.pause()
    assert slept[-1] == 1.0


def test_a_cause_is_new_once_until_another_or_a_success() -> None:
    retry = retries.Retry(1.0, 30.0)
    assert retry.succeeded() is False, "no failure to recover from"
    assert [retry.failed(cause) for cause in ("refused", "refused", "gone", "refused")] == [True, False, True, True]
    assert retry.succeeded() is True
    assert retry.failed("refused") is True

