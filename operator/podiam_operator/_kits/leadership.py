"""One active replica: kopf's peering decides, this guard makes sure the engine obeys.

kopf pauses its watches when a live peer has a higher priority, but our own
background tasks (pushes, refreshes) would go on with a frozen picture of the
cluster. So the engine waits to be the leader before its first push, and a
replica that loses leadership after acting as one exits (its pod restarts
it as a standby with a fresh picture) rather than push stale state.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Any

from podiam_operator._kits import kube as kubes

logger = logging.getLogger(__name__)


def default_priority() -> int:
    """Older replicas win: a replica started later never preempts the active one."""
    return 10**13 - int(time.time() * 1000)


def _parse(moment: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(moment).replace("Z", "+00:00"))
    except ValueError:
        return None


class Leadership:
    def __init__(self, kube: kubes.Kube, *, name: str, identity: str, priority: int, interval: float) -> None:
        self.kube = kube
        self.name = name
        self.identity = identity
        self.priority = priority
        self.interval = interval

    async def higher_peers(self) -> list[str]:
        peers = await self.kube.peers(self.name)
        now = datetime.datetime.now(datetime.timezone.utc)
        found = []
        for identity, info in peers.items():
            if identity == self.identity or not isinstance(info, dict):
                continue
            seen = _parse(info.get("lastseen"))
            if seen is None:
                continue
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=datetime.timezone.utc)
            alive = (now - seen).total_seconds() < float(info.get("lifetime", 60))
            if alive and int(info.get("priority", 0)) >= self.priority:
                found.append(identity)
        return found

    async def wait_until_leader(self) -> None:
        while True:
            try:
                higher = await self.higher_peers()
            except Exception as error:  # the API may be briefly away: keep asking
                logger.warning("peering check failed: %s", error)
                higher = ["?"]
            if not higher:
                return
            logger.info("standing by: peers %s are active", higher)
            await asyncio.sleep(self.interval)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                higher = await self.higher_peers()
            except Exception as error:
                logger.warning("peering check failed: %s", error)
                continue
            if higher:
                logger.error("another replica (%s) took over: exiting so that this one restarts as a standby", higher)
                os._exit(3)
