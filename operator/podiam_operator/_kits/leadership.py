"""One active replica: kopf's peering decides, this guard makes sure the engine obeys.

kopf pauses itself when a live peer has a higher priority, but the engine's
own tasks (its watches, pushes, refreshes) do not know of that. So the
engine waits to be the leader before its first push, and a replica that
loses leadership after acting as one exits (its pod restarts it as a
standby) rather than push alongside another leader.

kopf also pauses every replica that sees a live peer with its own priority,
itself included, and waits for one of them to go: two replicas given the
same ``--peering-priority`` would both stand by forever. So the priority
kopf sees is never just the configured one (:func:`peering_priority`), and a
standby that still finds an exact tie gives way (:meth:`Leadership.wait_until_leader`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, NoReturn

from metadata_proxy import wire
from podiam_operator._kits import kube as kubes

logger = logging.getLogger(__name__)

# kopf's priority travels as a JSON integer through the API server, which keeps int64:
# configured priority x 10^15 + start-time rank x 10^4 + a random draw stays below 2^63.
MAX_CONFIGURED_PRIORITY = 9000
_DRAWS = 10**4
_EPOCH_SPAN = 10**11  # seconds since 1970: until the year 5138


def peering_priority(configured: int, started: float, rng: random.Random) -> int:
    """The priority kopf sees: the configured one first, then the older replica, then a random draw.

    Older first: a replica that starts later (a rollout, a scale-up) never
    preempts the active one. The draw separates replicas started in the
    same second (a Deployment's two replicas, usually).
    """
    if abs(configured) > MAX_CONFIGURED_PRIORITY:
        raise ValueError(f"the peering priority must be within +-{MAX_CONFIGURED_PRIORITY}")
    rank = _EPOCH_SPAN - 1 - int(started)
    return (configured * _EPOCH_SPAN + rank) * _DRAWS + rng.randrange(_DRAWS)


def _exit_for_a_new_draw() -> NoReturn:
    os._exit(3)


def _parse(moment: Any) -> datetime.datetime | None:
    return wire.parse_rfc3339(str(moment))


class Leadership:
    def __init__(
        self,
        kube: kubes.Kube,
        *,
        name: str,
        identity: str,
        priority: int,
        interval: float,
        give_way: Callable[[], NoReturn] = _exit_for_a_new_draw,
    ) -> None:
        self.kube = kube
        self.name = name
        self.identity = identity
        self.priority = priority
        self.interval = interval
        # Leaves the peering for good; the pod's restart draws a new priority.
        self.give_way = give_way
        self._listed_since: float | None = None  # when this replica's own entry was first seen (monotonic)

    async def live_peers(self) -> dict[str, int]:
        """The other replicas alive in the peering object, with their priorities."""
        peers = await self.kube.peers(self.name)
        if self.identity in peers and self._listed_since is None:
            self._listed_since = time.monotonic()
        now = datetime.datetime.now(datetime.timezone.utc)
        found = {}
        for identity, info in peers.items():
            if identity == self.identity or not isinstance(info, dict):
                continue
            seen = _parse(info.get("lastseen"))
            if seen is None:
                continue
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=datetime.timezone.utc)
            if (now - seen).total_seconds() < float(info.get("lifetime", 60)):
                found[identity] = int(info.get("priority", 0))
        return found

    async def higher_peers(self) -> list[str]:
        """Live replicas that keep this one from leading: a higher priority, or the same (kopf pauses both then)."""
        return [identity for identity, priority in (await self.live_peers()).items() if priority >= self.priority]

    async def observe(self) -> None:
        """From the start, until this replica's own entry is seen: then a replica that lists the cluster for a
        minute has waited out the settling interval (see :meth:`wait_until_leader`) by the time it is done."""
        while self._listed_since is None:
            try:
                await self.live_peers()
            except Exception as error:  # wait_until_leader says it, and keeps asking
                logger.debug("peering check failed: %s", error)
            if self._listed_since is None:
                await asyncio.sleep(self.interval)

    async def wait_until_leader(self) -> None:
        while True:
            try:
                peers = await self.live_peers()
            except Exception as error:  # the API may be briefly away: keep asking
                logger.warning("peering check failed: %s", error)
                await asyncio.sleep(self.interval)
                continue
            higher = sorted(identity for identity, priority in peers.items() if priority >= self.priority)
            # Replicas that start together must see each other before either leads: kopf lists this
            # one in the peering object at start; a peer started with it has listed itself within an
            # interval of that, so both were briefly active without this wait (the loser then exited).
            settled = self._listed_since is not None and time.monotonic() - self._listed_since >= self.interval
            if not higher and settled:
                return
            tied = [identity for identity in higher if peers[identity] == self.priority]
            # Same priority (the same second, the same draw): kopf pauses both replicas until one goes. The
            # one whose identity sorts first goes, deterministically; the other leads once its entry expires.
            if tied and self.identity < min(tied):
                logger.warning("peering priority %d is also %s's: leaving so that a restart draws a new one", self.priority, tied[0])
                self.give_way()
            if higher:
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
