"""Which waiting STS call goes next: renewals first, namespaces in turn, each within its budget.

One namespace must not be able to spend everyone's STS calls: a thousand
pods with a thousand external ids (or per-pod sessions) are a thousand
AssumeRole calls, and AWS throttles an account's calls as a whole. So every
call is charged to a namespace that uses its credential set, and

- each namespace has a budget, a token bucket: ``burst`` calls at once, then
  ``rate`` calls a second; a call waits until one of its namespaces can pay
  (a credential set shared by several namespaces never waits for the one
  that spent its budget);
- renewals of credentials in use go before first fetches (a pod that has
  credentials must not lose them to someone else's new pods), but never take
  the last free slot (the dispatcher's rule): when STS is slow, renewals that
  keep timing out would otherwise hold every slot and a new pod would wait
  for ever with no answer at all;
- within each, the namespaces take turns (the one served longest ago goes
  first), so a namespace with many waiting calls delays another's by one
  turn, not by its whole queue.

Pure: time is passed in (monotonic seconds); the asyncio side is
``podiam_operator._kits.sts.Dispatcher``.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable

RENEWAL, NEW = 0, 1  # priorities: lower goes first
FREE = ""  # the payer of calls no namespace uses (never limited)


@dataclasses.dataclass(frozen=True)
class Ticket:
    id: int
    payers: frozenset[str]  # namespaces using the credential set
    priority: int


@dataclasses.dataclass
class _Bucket:
    tokens: float
    updated: float


class FairShare:
    def __init__(self, *, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self._buckets: dict[str, _Bucket] = {}
        self._queues: dict[tuple[int, str], collections.OrderedDict[int, Ticket]] = {}
        self._tickets: dict[int, Ticket] = {}
        self._served: dict[str, int] = {}  # namespace -> the turn it was last served in
        self._turn = 0

    def __len__(self) -> int:
        return len(self._tickets)

    def tickets(self) -> Iterable[Ticket]:
        return self._tickets.values()

    def waiting(self, priority: int) -> int:
        return sum(1 for t in self._tickets.values() if t.priority == priority)

    def add(self, ticket: Ticket) -> None:
        self._tickets[ticket.id] = ticket
        for payer in ticket.payers or {FREE}:
            self._queues.setdefault((ticket.priority, payer), collections.OrderedDict())[ticket.id] = ticket

    def discard(self, ticket_id: int) -> None:
        ticket = self._tickets.pop(ticket_id, None)
        if ticket is None:
            return
        for payer in ticket.payers or {FREE}:
            queue = self._queues.get((ticket.priority, payer))
            if queue is not None:
                queue.pop(ticket_id, None)
                if not queue:
                    del self._queues[(ticket.priority, payer)]

    def tokens(self, namespace: str, now: float) -> float:
        """The namespace's budget left now (``inf`` for calls no namespace uses)."""
        if namespace == FREE:
            return float("inf")
        bucket = self._buckets.get(namespace)
        if bucket is None:
            return self.burst
        return min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)

    def can_pay(self, payers: frozenset[str], now: float) -> bool:
        return any(self.tokens(payer, now) >= 1 for payer in payers or {FREE})

    def pick(self, now: float, *, renewals: bool = True) -> tuple[Ticket, str] | None:
        """The call to make now and the namespace it is charged to; None if every waiting call waits for a budget
        (or, with ``renewals`` false, every call that could go is a renewal)."""
        for priority in sorted({p for p, _ in self._queues if renewals or p != RENEWAL}):
            payers = [n for p, n in self._queues if p == priority and self.tokens(n, now) >= 1]
            if not payers:
                continue
            payer = min(payers, key=lambda n: (self._served.get(n, -1), n))
            ticket = next(iter(self._queues[(priority, payer)].values()))
            self.discard(ticket.id)
            self._charge(payer, now)
            return ticket, payer
        return None

    def next_refill(self, now: float) -> float | None:
        """Seconds until a waiting call's namespace can pay again (None: nothing waits for a budget)."""
        short = [(1 - self.tokens(n, now)) / self.rate for _, n in self._queues if self.tokens(n, now) < 1]
        return max(0.0, min(short)) if short else None

    def _charge(self, payer: str, now: float) -> None:
        self._turn += 1
        self._served[payer] = self._turn
        if payer == FREE:
            return
        self._buckets[payer] = _Bucket(self.tokens(payer, now) - 1, now)
        self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        """Drop what a full bucket with nothing waiting would recreate as it is: memory stays bounded by activity."""
        queued = {n for _, n in self._queues}
        for namespace in [n for n in self._buckets if n not in queued and self.tokens(n, now) >= self.burst]:
            del self._buckets[namespace]
            self._served.pop(namespace, None)
