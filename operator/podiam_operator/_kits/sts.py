"""STS credentials: a small source protocol, retries, and the shared cache.

- :class:`CredentialSource`: what the cache needs of STS (AssumeRole and
  GetCallerIdentity). :class:`AioBotocoreSource` is the real one; unit tests
  give a fake.
- :func:`with_retries`: exponential backoff with full jitter on throttling,
  5xx and network errors; other errors (AccessDenied, ...) fail at once.
- :class:`Dispatcher`: STS calls in flight at most ``concurrency``; which
  waiting call goes next, and when a namespace's budget lets it, is
  :class:`~podiam_operator._core.fairshare.FairShare`'s choice.
- :class:`CredentialCache`: one credential set per key, shared by every pod
  that uses it; one call in flight per key, charged to the namespaces that
  use it; a failed key is retried later with growing delays; each set is
  renewed at its refresh point and never handed out below a floor of
  remaining lifetime. Time comes from an injected clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import itertools
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import pydantic

from metadata_proxy import wire
from podiam_operator import _metrics
from podiam_operator._core import decide, fairshare, reasons
from podiam_operator._kits import clock as clocks

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Error codes worth another attempt (besides any 5xx and network errors).
RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestThrottled", "SlowDown", "ServiceUnavailable", "InternalFailure", "InternalError",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "IDPCommunicationError",
})


# What to check when botocore finds no credentials for the operator itself.
NO_CREDENTIALS_HINT = (
    "the operator's own AWS identity: on the pod network it reads the node's role through its node's proxy "
    "(operator.nodeIdentity), or give it IRSA (operator.serviceAccount.annotations) or keys (operator.credentialsSecret)"
)


@dataclasses.dataclass(frozen=True)
class AssumeRequest:
    role_arn: str
    session_name: str
    duration: int
    external_id: str | None = None
    tags: tuple[tuple[str, str], ...] = ()  # all transitive, as EKS Pod Identity's
    via: str | None = None  # an intermediate role, assumed first (with the tags), whose session assumes role_arn

    @classmethod
    def for_grant(cls, grant: decide.Grant) -> AssumeRequest:
        return cls(grant.role.arn, grant.session_name, grant.duration, grant.external_id, grant.tags,
                   grant.via.arn if grant.via else None)


@dataclasses.dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: pydantic.SecretStr = dataclasses.field(repr=False)
    session_token: pydantic.SecretStr = dataclasses.field(repr=False)
    expiration: datetime.datetime
    issued: datetime.datetime

    def remaining(self, now: datetime.datetime) -> float:
        return (self.expiration - now).total_seconds()


class StsError(Exception):
    def __init__(self, code: str, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status


class CredentialSource(Protocol):
    async def assume_role(self, request: AssumeRequest) -> Credentials: ...

    async def caller_identity(self) -> tuple[str, str]:
        """``(arn, account)`` of the operator's own (possibly assumed) identity."""
        ...


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base: float,
    cap: float,
    clock: clocks.Clock,
    rng: random.Random,
    what: str,
) -> T:
    """Run ``call``; on a retryable StsError wait base*2^n (full jitter, capped) and try again."""
    for attempt in range(attempts):
        try:
            return await call()
        except StsError as error:
            if not error.retryable or attempt == attempts - 1:
                raise
            delay = rng.uniform(0, min(cap, base * 2**attempt))
            logger.warning("STS %s failed (%s), attempt %d/%d; retrying in %.2fs", what, error.code, attempt + 1, attempts, delay)
            await clock.sleep(delay)
    raise AssertionError("unreachable")


OVER_BUDGET_LOG_INTERVAL = 60.0  # seconds between two log lines about one namespace's waiting calls


class Dispatcher:
    """At most ``concurrency`` STS calls in flight; the order and the budgets are :class:`fairshare.FairShare`'s."""

    def __init__(self, clock: clocks.Clock, *, concurrency: int, burst: float, rate: float) -> None:
        self.clock = clock
        self.share = fairshare.FairShare(burst=burst, rate=rate)
        self._free = concurrency
        # Renewals may hold every slot but one: that one is for first fetches, so a renewal storm against a slow
        # STS (each renewal spending its attempts' timeouts) cannot keep a new pod from ever getting an answer.
        self._renewal_slots = max(1, concurrency - 1)
        self._renewing = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        self._logged: dict[str, float] = {}  # namespace -> when its waiting calls were last logged

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def over_budget(self, payers: frozenset[str]) -> bool:
        """Would a call for these namespaces wait for a budget now?"""
        return not self.share.can_pay(payers, self._now())

    @contextlib.asynccontextmanager
    async def slot(self, payers: frozenset[str], *, renewal: bool) -> AsyncIterator[None]:
        """Hold one of the STS slots for one call (waits for its turn and its namespaces' budget)."""
        ticket = fairshare.Ticket(next(self._ids), payers, fairshare.RENEWAL if renewal else fairshare.NEW)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[ticket.id] = future
        self.share.add(ticket)
        if not self.share.can_pay(payers, self._now()):
            _metrics.STS_BUDGET_WAITS.inc()
        self._dispatch()
        try:
            await future
        except BaseException:
            if self._waiting.pop(ticket.id, None) is not None:
                self.share.discard(ticket.id)  # cancelled while waiting
                self._gauge()
            elif not future.cancelled():
                self._release(renewal)  # cancelled just as its turn came
            raise
        try:
            yield
        finally:
            self._release(renewal)

    def _release(self, renewal: bool) -> None:
        self._free += 1
        self._renewing -= renewal
        self._dispatch()

    def _dispatch(self) -> None:
        now = self._now()
        while self._free > 0 and (picked := self.share.pick(now, renewals=self._renewing < self._renewal_slots)) is not None:
            future = self._waiting.pop(picked[0].id)
            self._free -= 1
            self._renewing += picked[0].priority == fairshare.RENEWAL
            future.set_result(None)
        self._gauge()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._free > 0 and (delay := self.share.next_refill(now)) is not None:
            self._report(now)
            self._timer = asyncio.ensure_future(self._wake(delay))

    async def _wake(self, delay: float) -> None:
        await self.clock.sleep(delay)
        self._timer = None
        self._dispatch()

    def _report(self, now: float) -> None:
        """Say (at most once a minute per namespace) which namespaces' calls wait for their budget."""
        waiting = collections.Counter(p for t in self.share.tickets() if not self.share.can_pay(t.payers, now) for p in t.payers)
        for namespace, count in waiting.items():
            if now - self._logged.get(namespace, -OVER_BUDGET_LOG_INTERVAL) >= OVER_BUDGET_LOG_INTERVAL:
                self._logged[namespace] = now
                logger.warning("namespace %s has spent its STS budget (%g calls, then %g a second): %d of its AssumeRole "
                               "calls wait; other namespaces' calls go ahead", namespace, self.share.burst, self.share.rate, count)
        for namespace in [n for n, t in self._logged.items() if now - t >= OVER_BUDGET_LOG_INTERVAL and n not in waiting]:
            del self._logged[namespace]

    def _gauge(self) -> None:
        _metrics.STS_WAITING.labels("renewal").set(self.share.waiting(fairshare.RENEWAL))
        _metrics.STS_WAITING.labels("new").set(self.share.waiting(fairshare.NEW))


@dataclasses.dataclass
class _Entry:
    request: AssumeRequest
    payers: frozenset[str] = frozenset()  # the namespaces using it, when last fetched
    queued: bool = False  # its call waits for an STS slot (its turn, its namespaces' budget)
    credentials: Credentials | None = None
    refresh_at: datetime.datetime | None = None
    failure: StsError | None = None
    failures: int = 0
    retry_at: datetime.datetime | None = None
    inflight: asyncio.Future[Credentials] | None = None


class CredentialCache:
    def __init__(
        self,
        source: CredentialSource,
        clock: clocks.Clock,
        *,
        concurrency: int = 8,
        namespace_burst: float = 100.0,
        namespace_rate: float = 2.0,
        attempts: int = 5,
        retry_base: float = 0.2,
        retry_cap: float = 10.0,
        refresh_point: float = 0.5,
        min_remaining: float = 1200.0,
        failure_retry_base: float = 5.0,
        failure_retry_max: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.clock = clock
        self.attempts = attempts
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.refresh_point = refresh_point
        self.min_remaining = min_remaining
        self.failure_retry_base = failure_retry_base
        self.failure_retry_max = failure_retry_max
        self.rng = rng or random.Random()
        self.dispatcher = Dispatcher(clock, concurrency=concurrency, burst=namespace_burst, rate=namespace_rate)
        self._entries: dict[str, _Entry] = {}
        self._changed = asyncio.Event()

    # --- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def usable(self, key: str) -> Credentials | None:
        """Credentials fit to push: with more than ``min_remaining`` left. Never expired ones."""
        entry = self._entries.get(key)
        if entry is None or entry.credentials is None:
            return None
        if entry.credentials.remaining(self.clock.now()) <= self.min_remaining:
            return None
        return entry.credentials

    def state(self, key: str) -> decide.KeyState:
        entry = self._entries.get(key)
        if entry is None:
            return decide.KeyState("pending")
        credentials = self.usable(key)
        if credentials is not None:
            return decide.KeyState("ok", expiration=wire.rfc3339(credentials.expiration))
        if entry.failure is not None:
            retry = f"; retrying at {wire.rfc3339(entry.retry_at)}" if entry.retry_at else ""
            return decide.KeyState("failed", reason=entry.failure.code, message=f"AssumeRole {entry.request.role_arn}: {entry.failure.message}{retry}")
        if entry.queued and self.dispatcher.over_budget(entry.payers):
            share = self.dispatcher.share
            return decide.KeyState("pending", reason=reasons.Reason.STS_BUDGET, message=(
                f"AssumeRole {entry.request.role_arn} waits: namespace {', '.join(sorted(entry.payers))} has spent its STS budget "
                f"({share.burst:g} calls, then {share.rate:g} a second); other namespaces' calls go ahead"))
        return decide.KeyState("pending")

    # --- obtaining ---------------------------------------------------------------

    async def get(self, key: str, request: AssumeRequest, payers: frozenset[str] = frozenset()) -> Credentials:
        """Usable credentials for ``key``, from the cache or one (shared) STS call charged to ``payers``. Raises StsError."""
        entry = self._entries.get(key)
        if entry is not None and entry.request == request:
            credentials = self.usable(key)
            if credentials is not None:  # past its refresh point, the refresher is renewing it
                _metrics.CACHE_LOOKUPS.labels("hit").inc()
                return credentials
            if entry.inflight is not None:
                _metrics.CACHE_LOOKUPS.labels("shared").inc()
                return await asyncio.shield(entry.inflight)
            if entry.failure is not None and entry.retry_at is not None and self.clock.now() < entry.retry_at:
                raise entry.failure  # not yet: a denied role is not hammered
        _metrics.CACHE_LOOKUPS.labels("miss").inc()
        return await self.refresh(key, request, payers)

    async def refresh(self, key: str, request: AssumeRequest, payers: frozenset[str] = frozenset()) -> Credentials:
        """Fetch new credentials for ``key`` (joins a call already in flight), charged to ``payers``' budgets."""
        entry = self._entries.get(key)
        if entry is None or entry.request != request:
            entry = self._entries[key] = _Entry(request)
            _metrics.CACHE_SIZE.set(len(self._entries))
        entry.payers = payers
        if entry.inflight is None:
            entry.inflight = asyncio.ensure_future(self._fetch(key, entry))
            entry.inflight.add_done_callback(_consume)
        return await asyncio.shield(entry.inflight)

    async def _fetch(self, key: str, entry: _Entry) -> Credentials:
        renewal = entry.credentials is not None  # credentials in use go before first fetches
        try:
            async def attempt() -> Credentials:
                entry.queued = True
                try:
                    async with self.dispatcher.slot(entry.payers, renewal=renewal):
                        entry.queued = False
                        return await self.source.assume_role(entry.request)
                finally:
                    entry.queued = False

            credentials = await with_retries(
                attempt, attempts=self.attempts, base=self.retry_base, cap=self.retry_cap,
                clock=self.clock, rng=self.rng, what=f"AssumeRole {entry.request.role_arn}",
            )
        except StsError as error:
            entry.failure = error
            entry.failures += 1
            delay = min(self.failure_retry_max, self.failure_retry_base * 2 ** (entry.failures - 1))
            entry.retry_at = self.clock.now() + datetime.timedelta(seconds=self.rng.uniform(delay / 2, delay))
            logger.warning("AssumeRole %s failed: %s (failure %d; next try at %s)", entry.request.role_arn, error, entry.failures, entry.retry_at)
            raise
        finally:
            entry.inflight = None
            self._changed.set()
        lifetime = (credentials.expiration - credentials.issued).total_seconds()
        entry.credentials = credentials
        entry.refresh_at = credentials.issued + datetime.timedelta(seconds=lifetime * self.refresh_point)
        entry.failure, entry.failures, entry.retry_at = None, 0, None
        if self._entries.get(key) is not entry:
            logger.debug("credentials for a forgotten key arrived; dropped")
        return credentials

    def forget(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.inflight is not None:
            entry.inflight.cancel()
        _metrics.CACHE_SIZE.set(len(self._entries))

    # --- scheduling ----------------------------------------------------------------

    def next_due(self) -> datetime.datetime | None:
        moments = [m for e in self._entries.values() if (m := _due_at(e)) is not None]
        return min(moments) if moments else None

    def due(self) -> list[tuple[str, AssumeRequest]]:
        now = self.clock.now()
        return [(key, entry.request) for key, entry in self._entries.items() if (m := _due_at(entry)) is not None and m <= now]

    async def run_refresher(
        self,
        in_use: Callable[[str], bool],
        on_result: Callable[[str, Credentials | None, StsError | None], Awaitable[None]],
        payers: Callable[[str], frozenset[str]] = lambda key: frozenset(),
        *,
        max_sleep: float = 60.0,
    ) -> None:
        """Forever: renew keys at their refresh point, retry failed ones, drop keys nobody uses.

        ``on_result`` hears of every renewal and failure (to push, and to update statuses);
        ``payers`` says which namespaces use a key (whose STS budgets its calls spend).
        """
        tasks: set[asyncio.Task[None]] = set()

        async def one(key: str, request: AssumeRequest) -> None:
            try:
                credentials = await self.refresh(key, request, payers(key))
            except StsError as error:
                await on_result(key, None, error)
            except asyncio.CancelledError:
                raise
            else:
                await on_result(key, credentials, None)

        try:
            while True:
                self._changed.clear()
                for key, request in self.due():
                    if not in_use(key):
                        self.forget(key)  # nobody needs it any more: not renewed
                        continue
                    task = asyncio.ensure_future(one(key, request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                due = self.next_due()
                wait = max_sleep if due is None else min(max_sleep, max(0.0, (due - self.clock.now()).total_seconds()))
                sleeper = asyncio.ensure_future(self.clock.sleep(wait))
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    changed.cancel()
        finally:
            for task in tasks:
                task.cancel()


def _due_at(entry: _Entry) -> datetime.datetime | None:
    """When the entry next needs STS: its retry time after a failure, else its refresh point."""
    if entry.inflight is not None:
        return None
    return entry.retry_at if entry.failure is not None else entry.refresh_at


def _consume(future: asyncio.Future[Any]) -> None:
    # The fetch's exception is re-raised to every waiter; mark it retrieved
    # so asyncio does not also log it as never retrieved.
    if not future.cancelled():
        future.exception()


# --- the real source: aiobotocore -------------------------------------------------------

FALLBACK_REGION = "us-east-1"
_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+")
# The intermediate role's session only makes the one call that assumes the pod's role: STS's shortest.
HOP_DURATION = 900


async def region_from_metadata() -> str | None:
    """The region in the node's metadata (``placement/region``, on the proxy's default allow-list), or None.

    botocore's own lookup reads the availability zone and drops its last
    letter, which is wrong in Local Zones (``us-west-2-lax-1a``). Honours
    ``AWS_EC2_METADATA_DISABLED`` and ``AWS_EC2_METADATA_SERVICE_ENDPOINT``.
    """
    from aiobotocore.session import get_session  # type: ignore[import-untyped]
    from aiobotocore.utils import AioIMDSRegionProvider, AioInstanceMetadataRegionFetcher  # type: ignore[import-untyped]

    class Fetcher(AioInstanceMetadataRegionFetcher):  # type: ignore[misc]
        _URL_PATH = "latest/meta-data/placement/region"

        async def _get_region(self) -> str:
            token = await self._fetch_metadata_token()
            response = await self._get_request(url_path=self._URL_PATH, retry_func=self._default_retry, token=token)
            return str(await response.text).strip()

    class Provider(AioIMDSRegionProvider):  # type: ignore[misc]
        def _get_fetcher_cls(self) -> type:
            return Fetcher

    try:
        found = await Provider(get_session()).provide()
    except Exception as error:  # any failure means "not from there": the caller says what it uses instead
        logger.debug("no region from the node's metadata: %s: %s", type(error).__name__, error)
        return None
    return found if isinstance(found, str) and _REGION.fullmatch(found) else None


def client_error(response: Mapping[str, Any], fallback: str) -> StsError:
    """STS's error answer (botocore's ``ClientError.response``) as an StsError, whichever the action.

    Retryable: a code worth another attempt (throttling, STS's own failures),
    any 5xx, and HTTP 429 whatever its code says.
    """
    error = response.get("Error") or {}
    code = str(error.get("Code", "Unknown"))
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return StsError(code, str(error.get("Message", fallback)),
                    retryable=code in RETRYABLE_CODES or status >= 500 or status == 429, status=status)


class _Client:
    """One STS client, the calls in flight on it, and whether a newer client replaced it."""

    def __init__(self, creator: Any, client: Any) -> None:
        self.creator = creator  # aiobotocore's context manager: leaving it closes the client
        self.client = client
        self.calls = 0
        self.replaced = False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.creator.__aexit__(None, None, None)


class AioBotocoreSource:
    """STS through aiobotocore; with ``assume_role_arn``, pod roles are assumed from that role's session.

    No client exists before the first call: botocore resolves the credential
    chain (environment, web identity for IRSA, the instance metadata service)
    when a client is created, and a standby replica must not need AWS at all.
    A client created while no credentials could be found would stay without
    them forever (the operator pod may ask its node's proxy before the
    operator has pushed its own entry there), so a call that finds none drops
    the client and the next one resolves the chain again.

    A client that is replaced (the assumeRoleArn session renewed, or the
    chain resolved again) closes at once, or as soon as the calls in flight
    on it are done.
    """

    def __init__(
        self,
        *,
        region: str | None,
        endpoint_url: str | None,
        timeout: float,
        assume_role_arn: str | None = None,
        max_connections: int = 16,
    ) -> None:
        self.region = region  # None: the node's metadata says, at the first call (else us-east-1)
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self.assume_role_arn = assume_role_arn
        self.max_connections = max_connections
        self._base: _Client | None = None
        self._chained: _Client | None = None  # the assumeRoleArn session's
        self._chained_credentials: Credentials | None = None
        self._draining: set[_Client] = set()  # replaced, with calls still in flight on them
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AioBotocoreSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for held in [self._base, self._chained, *self._draining]:
            if held is not None:
                await held.close()
        self._base = self._chained = None
        self._draining.clear()

    async def _region(self) -> str:
        """The configured region; else the node's metadata's (looked up again next time if it had none), else us-east-1."""
        if self.region is not None:
            return self.region
        found = await region_from_metadata()
        if found is not None:
            logger.info("STS region %s, from the node's metadata (no --sts-region, AWS_REGION or AWS_DEFAULT_REGION)", found)
            self.region = found
            return found
        logger.warning("no STS region: none configured (--sts-region, AWS_REGION, AWS_DEFAULT_REGION) and none from the "
                       "node's metadata (placement/region); using %s", FALLBACK_REGION)
        return FALLBACK_REGION

    def _creator(self, region: str, credentials: Credentials | None = None) -> Any:
        """An STS client's context manager: regional endpoint, one attempt per call, ``credentials`` or botocore's chain."""
        from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
        from aiobotocore.session import get_session

        session = get_session()
        # Regional endpoints (sts.<region>.amazonaws.com), never the global one.
        session.set_config_variable("sts_regional_endpoints", "regional")
        config = AioConfig(
            # Our own retry loop (with_retries) does the retrying: one attempt here.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            max_pool_connections=self.max_connections,
        )
        kwargs: dict[str, Any] = {"region_name": region, "endpoint_url": self.endpoint_url, "config": config}
        if credentials is not None:
            kwargs.update(
                aws_access_key_id=credentials.access_key_id,
                aws_secret_access_key=credentials.secret_access_key.get_secret_value(),
                aws_session_token=credentials.session_token.get_secret_value(),
            )
        return session.create_client("sts", **kwargs)

    async def _new_client(self, credentials: Credentials | None = None) -> _Client:
        creator = self._creator(await self._region(), credentials)
        return _Client(creator, await creator.__aenter__())

    async def _replaced(self, old: _Client | None) -> None:
        """A newer client took ``old``'s place: close it now, or once its last call in flight is done."""
        if old is None:
            return
        old.replaced = True
        if old.calls == 0:
            await old.close()
        else:
            self._draining.add(old)

    @contextlib.asynccontextmanager
    async def _holding(self, held: _Client) -> AsyncIterator[Any]:
        """``held``'s client for one call: not closed under it."""
        held.calls += 1
        try:
            yield held.client
        finally:
            held.calls -= 1
            if held.replaced and held.calls == 0:
                self._draining.discard(held)
                await held.close()

    async def _forget_credentials(self) -> None:
        """No usable credentials were found: resolve the chain again on the next call."""
        base, chained = self._base, self._chained
        self._base = self._chained = self._chained_credentials = None
        await self._replaced(base)
        await self._replaced(chained)

    @contextlib.asynccontextmanager
    async def _caller(self) -> AsyncIterator[Any]:
        """The client pod roles are assumed with (the base one, or the assumeRoleArn session's), for one call."""
        async with self._lock:
            if self._base is None:
                self._base = await self._new_client()
            held = self._base
            if self.assume_role_arn is not None:
                now = datetime.datetime.now(datetime.timezone.utc)
                if self._chained is None or self._chained_credentials is None or self._chained_credentials.remaining(now) < 900:
                    async with self._holding(held) as base:
                        credentials = await self._assume(base, AssumeRequest(self.assume_role_arn, "podiam-operator", 3600))
                    old, self._chained = self._chained, await self._new_client(credentials)
                    self._chained_credentials = credentials
                    await self._replaced(old)
                assert self._chained is not None
                held = self._chained
        async with self._holding(held) as client:
            yield client

    async def _request(self, action: str, role_arn: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """One STS call, counted and timed; any failure as an StsError (:func:`client_error` for STS's answers)."""
        import botocore.exceptions  # type: ignore[import-untyped]

        started = time.monotonic()
        result = "ok"
        try:
            return await call()
        except botocore.exceptions.ClientError as error:
            failure = client_error(error.response, str(error))
            result = failure.code
            raise failure from None
        except (botocore.exceptions.BotoCoreError, OSError, asyncio.TimeoutError) as error:
            result = type(error).__name__
            raise await self._explained(error) from None
        finally:
            _metrics.STS_CALLS.labels(action, result).inc()
            _metrics.STS_LATENCY.labels(action, result).observe(time.monotonic() - started)
            if result != "ok":
                _metrics.sts_error(action, result, role_arn)

    async def _assume(self, client: Any, request: AssumeRequest) -> Credentials:
        params: dict[str, Any] = {
            "RoleArn": request.role_arn,
            "RoleSessionName": request.session_name,
            "DurationSeconds": request.duration,
        }
        if request.external_id:
            params["ExternalId"] = request.external_id
        if request.tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in request.tags]
            # As EKS Pod Identity's: they follow the session into any role it assumes (role chaining).
            params["TransitiveTagKeys"] = [k for k, _ in request.tags]
        response = await self._request("AssumeRole", request.role_arn, lambda: client.assume_role(**params))
        raw = response["Credentials"]
        return Credentials(
            access_key_id=raw["AccessKeyId"],
            secret_access_key=pydantic.SecretStr(raw["SecretAccessKey"]),
            session_token=pydantic.SecretStr(raw["SessionToken"]),
            expiration=raw["Expiration"].astimezone(datetime.timezone.utc),
            issued=datetime.datetime.now(datetime.timezone.utc),
        )

    async def _explained(self, error: BaseException) -> StsError:
        """A network or credential error as a retryable StsError; no credentials: look again next time."""
        import botocore.exceptions

        if isinstance(error, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError,
                              botocore.exceptions.CredentialRetrievalError)):
            await self._forget_credentials()
            return StsError(type(error).__name__, f"{error} ({NO_CREDENTIALS_HINT})", retryable=True)
        return StsError(type(error).__name__, str(error), retryable=True)

    async def assume_role(self, request: AssumeRequest) -> Credentials:
        async with self._caller() as caller:
            if request.via is None:
                return await self._assume(caller, request)
            # The binding's intermediate role first, with the session's tags; its session then assumes the role.
            hop = await self._assume(caller, AssumeRequest(request.via, request.session_name, HOP_DURATION, tags=request.tags))
        async with self._creator(await self._region(), hop) as client:
            # The tags came along, transitive: STS refuses them a second time.
            return await self._assume(client, dataclasses.replace(request, tags=(), via=None))

    async def caller_identity(self) -> tuple[str, str]:
        async with self._caller() as client:
            response = await self._request("GetCallerIdentity", "", client.get_caller_identity)
        return str(response["Arn"]), str(response["Account"])
