"""Trying again while something fails: pauses doubling from a floor to a ceiling, each cause said once."""

from __future__ import annotations

import asyncio

# Seconds between attempts while the API server refuses or is away (the starting listing, the watches).
API_LOW, API_HIGH = 1.0, 30.0


class Retry:
    """The state between attempts of one repeated task.

    ``failed(cause)`` is True when the cause is new, so the caller logs it
    once however often it repeats; ``pause()`` waits the current delay, then
    doubles it up to ``high``; ``succeeded()`` starts over, True when it ends
    a run of failures (to say the task works again).
    """

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self.delay = low
        self.cause = ""

    def failed(self, cause: str) -> bool:
        new = cause != self.cause
        self.cause = cause
        return new

    async def pause(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.high, self.delay * 2)

    def succeeded(self) -> bool:
        recovered = bool(self.cause)
        self.delay, self.cause = self.low, ""
        return recovered
