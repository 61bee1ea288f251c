"""The security invariants of podiam, checked on every answer a pod's IP gets.

One checker for the fault tests and the soak (``bench/soak``). The test
driver tells it who holds each pod IP on each node, and with which role, as
it changes the cluster; every IMDS answer observed from an IP is then judged:

- **foreign**: credentials whose AccessKeyId was issued for a role the IP's
  holder is not bound to (another pod's credentials);
- **no-role**: credentials served to an IP whose holder has no role, or to
  an IP nobody holds, once the previous holder's grace is over;
- **unknown-key**: an AccessKeyId the STS front never issued;
- **expired**: a document whose ``Expiration`` is not more than the proxy's
  expiry margin ahead (``margin``; the proxy never serves within it);
- **late-revocation**: the previous holder's role still served to a
  released IP (or to a pod that lost its role) ``revoke_bound`` seconds after
  the change (or after the end of an outage the driver declared, whichever is
  later);
- **server-error**: any 5xx from the metadata port.

Holders change through :meth:`Checker.change`, a context manager around the
API call that makes the change: the new holder's role is allowed from the
call's start, the old one until ``grace`` seconds after the call returned
(the operator needs that long to see the change and push it; requests in
flight may see either). An IP is handed to another pod only once
:meth:`Checker.reusable` says so, modelling the kubelet, which reuses a pod's
IP only after its sandbox is gone: from then on, the old role served to the
IP is a violation with no grace at all.

AccessKeyIds map to roles through the STS front's record of what it issued
(``StsFront.issued_keys``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

INF = float("inf")


@dataclasses.dataclass
class _State:
    since: float  # when the change that made it started
    settled: float  # when that change's API call returned (INF while in flight)
    uid: str | None  # None: nobody holds the IP
    role_arn: str | None


@dataclasses.dataclass(frozen=True)
class Violation:
    kind: str
    node: str
    ip: str
    detail: str
    at: float

    def __str__(self) -> str:
        return f"{self.kind} at {self.node}/{self.ip}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Answer:
    """One observed IMDS exchange: what was asked, when, and what came back."""

    node: str
    ip: str
    started: float
    finished: float
    status: int
    document: dict[str, Any] | None = None  # the credential document, when one was served


class Checker:
    def __init__(
        self,
        issued_keys: Callable[[], dict[str, str]],
        *,
        grace: float = 1.0,
        revoke_bound: float = 5.0,
        margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issued_keys = issued_keys
        self.grace = grace
        self.revoke_bound = revoke_bound
        self.margin = margin
        self.clock = clock
        self._lock = threading.Lock()
        self._history: dict[tuple[str, str], list[_State]] = collections.defaultdict(list)
        self._keys: dict[str, str] = {}
        self._outage_since: float | None = None
        self._recovered_at = -INF
        self.violations: list[Violation] = []
        self.counts: collections.Counter[str] = collections.Counter()

    # --- what the driver tells us ---------------------------------------------------------

    @contextmanager
    def change(self, node: str, ip: str, *, uid: str | None, role_arn: str | None) -> Iterator[None]:
        """Around the API call that gives ``ip`` to pod ``uid`` (role or None), or takes it away (uid None)."""
        state = _State(self.clock(), INF, uid, role_arn)
        with self._lock:
            self._history[(node, ip)].append(state)
        try:
            yield
        finally:
            state.settled = self.clock()

    def outage(self) -> None:
        """The operator cannot act (killed, no leader): revocations wait for :meth:`recovered`."""
        with self._lock:
            if self._outage_since is None:
                self._outage_since = self.clock()

    def recovered(self) -> None:
        with self._lock:
            self._outage_since = None
            self._recovered_at = self.clock()

    def holder(self, node: str, ip: str) -> tuple[str | None, str | None]:
        with self._lock:
            history = self._history.get((node, ip))
            return (history[-1].uid, history[-1].role_arn) if history else (None, None)

    def reusable(self, node: str, ip: str) -> bool:
        """Whether a kubelet could hand ``ip`` to a new pod now: nobody holds it, and any old role is past revocation."""
        now = self.clock()
        with self._lock:
            history = self._history.get((node, ip))
            if not history:
                return True
            last = history[-1]
            if last.uid is not None:
                return False
            return self._outage_since is None and now > self._revocation_deadline(last)

    def _revocation_deadline(self, state: _State) -> float:
        return max(state.settled, self._recovered_at) + self.revoke_bound

    # --- judging answers -------------------------------------------------------------------

    def role_of_key(self, access_key_id: str) -> str | None:
        role = self._keys.get(access_key_id)
        if role is None:
            self._keys = self._issued_keys()  # new credentials were issued since the last look
            role = self._keys.get(access_key_id)
        return role

    def _allowed(self, node: str, ip: str, started: float, finished: float) -> tuple[set[str], set[str]]:
        """(roles allowed outright, roles allowed only as a revocation still in progress)."""
        with self._lock:
            history = list(self._history.get((node, ip), ()))
            outage = self._outage_since
        current = max((i for i, s in enumerate(history) if s.since <= started), default=-1)
        allowed: set[str] = set()
        revoking: set[str] = set()
        for i, state in enumerate(history):
            # The holder when the request started, and any holder that came during it.
            if i >= current and state.since <= finished and state.role_arn:
                allowed.add(state.role_arn)
            # A change on its way to the proxy: the role before it is still fine.
            if i >= 1 and state.since <= finished and started < state.settled + self.grace and history[i - 1].role_arn:
                allowed.add(history[i - 1].role_arn)  # type: ignore[arg-type]
        if current >= 1 and history[current].role_arn is None and history[current - 1].role_arn \
                and history[current].uid in (None, history[current - 1].uid):
            # Released, or the same pod lost its role: the old role may linger until the
            # revocation deadline (never when another pod took the IP).
            if outage is not None or started <= self._revocation_deadline(history[current]):
                revoking.add(history[current - 1].role_arn)  # type: ignore[arg-type]
        return allowed, revoking - allowed

    def check(self, answer: Answer) -> Violation | None:
        self.counts["requests"] += 1
        violation = self._judge(answer)
        if violation is not None:
            with self._lock:
                self.violations.append(violation)
            self.counts[f"violation:{violation.kind}"] += 1
        elif answer.document is not None:
            self.counts["served"] += 1
        else:
            self.counts[f"status:{answer.status}"] += 1
        return violation

    def _judge(self, answer: Answer) -> Violation | None:
        def violation(kind: str, detail: str) -> Violation:
            return Violation(kind, answer.node, answer.ip, detail, answer.started)

        if answer.status >= 500:
            return violation("server-error", f"HTTP {answer.status}")
        document = answer.document
        if document is None:
            return None
        key = str(document.get("AccessKeyId", ""))
        role = self.role_of_key(key)
        if role is None:
            return violation("unknown-key", f"AccessKeyId {key} was never issued by STS")
        expiration = datetime.datetime.fromisoformat(str(document["Expiration"]).replace("Z", "+00:00"))
        left = expiration.timestamp() - time.time()
        if left <= self.margin - 2:  # 2 s: the proxy's clock check happened before ours
            return violation("expired", f"{role}: Expiration {document['Expiration']} only {left:.0f}s ahead")
        allowed, revoking = self._allowed(answer.node, answer.ip, answer.started, answer.finished)
        if role in allowed:
            return None
        if role in revoking:
            self.counts["served-while-revoking"] += 1
            return None
        uid, holder_role = self.holder(answer.node, answer.ip)
        if holder_role is None:
            kind = "late-revocation" if self._was_held_by(answer.node, answer.ip, role) else "no-role"
            return violation(kind, f"served {role} to an IP held by {uid or 'nobody'} with no role")
        return violation("foreign", f"served {role} to an IP held by pod {uid} bound to {holder_role}")

    def _was_held_by(self, node: str, ip: str, role: str) -> bool:
        with self._lock:
            history = list(self._history.get((node, ip), ()))
        return len(history) >= 2 and history[-2].role_arn == role and history[-1].uid in (None, history[-2].uid)

    def summary(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "violations": len(self.violations),
                "first_violations": [str(v) for v in self.violations[:10]]}


def document_of(status: int, body: bytes) -> dict[str, Any] | None:
    """The credential document in a 200 answer of ``.../security-credentials/<role>``, else None."""
    if status != 200:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) and "AccessKeyId" in parsed else None


CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"


def ask(proxy: Any, node: str, ip: str, clock: Callable[[], float] = time.monotonic) -> Answer:
    """What an SDK does, as the pod at ``ip``: list the role, fetch its document (status 0: proxy unreachable).

    ``proxy`` is a :class:`localcluster.proxy.ProxyProcess` (its ``imds_get``).
    """
    started = clock()
    try:
        listing = proxy.imds_get(CREDENTIALS_PATH, source_ip=ip)
        names = listing.text.strip().splitlines() if listing.status == 200 else []
        if not names:
            return Answer(node, ip, started, clock(), listing.status)
        answer = proxy.imds_get(CREDENTIALS_PATH + names[0], source_ip=ip)
    except OSError:
        return Answer(node, ip, started, clock(), 0)
    return Answer(node, ip, started, clock(), answer.status, document_of(answer.status, answer.body))


class Poller:
    """Threads asking as pods, almost without pause, and judging every answer; ``answers`` keeps the last ``keep``.

    ``targets()`` gives the (node, ip) pairs to ask from, re-read every round;
    a node is a :class:`localcluster.stack.Node` (``.name``, ``.proxy``).
    """

    def __init__(self, checker: Checker, targets: Callable[[], list[tuple[Any, str]]], *,
                 threads: int = 1, interval: float = 0.01, keep: int = 100_000) -> None:
        self.checker = checker
        self.targets = targets
        self.interval = interval
        self.answers: collections.deque[Answer] = collections.deque(maxlen=keep)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n, threads), daemon=True) for n in range(threads)]

    def _run(self, index: int, count: int) -> None:
        while not self._stop.is_set():
            targets = self.targets()
            # Every thread asks every target, starting at its own offset: several requests
            # per target can be in flight (a miss is held up to the proxy's credential wait).
            start = index * len(targets) // count if targets else 0
            for node, ip in targets[start:] + targets[:start]:
                if self._stop.is_set():
                    return
                answer = ask(node.proxy, node.name, ip, self.checker.clock)
                self.checker.check(answer)
                self.answers.append(answer)
            self._stop.wait(self.interval)

    def __enter__(self) -> Poller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def served(self, ip: str, role_arn: str, after: float = -INF) -> list[Answer]:
        """Answers to ``ip`` that carried ``role_arn``'s credentials, from requests started after ``after``."""
        return [a for a in list(self.answers) if a.ip == ip and a.started > after and a.document is not None
                and self.checker.role_of_key(str(a.document["AccessKeyId"])) == role_arn]
