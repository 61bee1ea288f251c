"""Time, injectable: the real clock in production, a fake one in tests (``tests/support/clock.py``: no sleeping)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime.datetime:
        """The current UTC time (timezone-aware)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
