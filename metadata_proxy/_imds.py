"""The pods' metadata API: EC2 IMDS as SDKs expect it, for the caller's source IP only.

Served by ``_http`` (a lean HTTP/1.1 protocol), not by a framework: a
credentials GET is a handful of string comparisons on the path, two dict
lookups, and bytes rendered when the credentials arrived, answered
synchronously. Only what has to wait (a pod whose entry is on its way, the
node's metadata service) returns a coroutine.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Awaitable

from metadata_proxy import _http, _metrics, _pod_ips, _ratelog, _settings, _store, _tokens, _upstream, _upstream_cache, wire

logger = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/"
CREDENTIALS_NO_SLASH = CREDENTIALS[:-1]
INFO = "/latest/meta-data/iam/info"

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
_TOKEN = TOKEN_HEADER.lower()
_TTL = TTL_HEADER.lower()

# What IAM accepts as a role name: the one path segment forwarded for a node-identity pod.
_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)

Answer = _http.Response | Awaitable[_http.Response]


def _text(status: int, body: str | bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> _http.Response:
    return _http.Response(status, body if isinstance(body, bytes) else body.encode(), headers=headers)


# Bodiless answers, the same every time.
_EMPTY = {status: _text(status) for status in (401, 404, 429)}
_REDIRECT = _text(301, headers=(("Location", CREDENTIALS),))
_PUT_ONLY = _text(405, headers=(("Allow", "PUT"),))
_GET_ONLY = _text(405, headers=(("Allow", "GET"),))
_FORWARDED = _text(403, "podiam: requests with X-Forwarded-For are refused\n")


def _route_of(path: str) -> str:
    if path == TOKEN_PATH:
        return "token"
    if path == CREDENTIALS:
        return "credentials-list"
    if path.startswith(CREDENTIALS):
        return "credentials"
    if path == CREDENTIALS_NO_SLASH:
        return "credentials-redirect"
    if path == INFO:
        return "info"
    return "other"


def _safe_for_upstream(raw: str) -> bool:
    # Only plain paths go upstream: no dot segments, escapes or empty segments
    # that the real service might resolve differently from our allow-list.
    return "%" not in raw and "//" not in raw and "/." not in raw and raw.startswith("/")


def _ipv6_caller(text: str) -> str:
    # On a dual-stack listener (--bind-address ::) IPv4 pods arrive as
    # ::ffff:a.b.c.d; the store holds them as a.b.c.d.
    address = ipaddress.ip_address(text.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


class _Counters:
    """Pre-bound metric children: labels() costs a lock and a dict walk per call."""

    def __init__(self, metrics: _metrics.Metrics) -> None:
        self.metrics = metrics
        self.record = metrics.requests.record
        self.hit = metrics.credentials.labels("hit")
        self.waited_hit = metrics.credentials.labels("waited_hit")
        self.miss = metrics.credentials.labels("miss")
        self.wrong_role = metrics.credentials.labels("wrong_role")
        self.node_identity = metrics.credentials.labels("node_identity")
        self.learned = metrics.credentials.labels("learned")


class Imds:
    """The metadata port: ``handle`` answers one request; ``server`` is the port's HTTP server (for ``_guard``)."""

    def __init__(
        self,
        settings: _settings.ProxySettings,
        store: _store.Store,
        metrics: _metrics.Metrics,
        logs: _ratelog.PerSource,
        tokens: _tokens.TokenIssuer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tokens = tokens or _tokens.TokenIssuer()
        self.counters = _Counters(metrics)
        self.allowed = [re.compile(pattern) for pattern in settings.allow_route]
        self.logs = logs
        bucket = _upstream_cache.TokenBucket(settings.upstream_rate, settings.upstream_burst, time.monotonic)
        self.upstream = _upstream_cache.CachedUpstream(_upstream.Upstream(str(settings.upstream), settings.upstream_timeout),
                                                       settings.upstream_cache_ttl, bucket, metrics)
        self.pod_ips = _pod_ips.Client(settings.pod_ips_socket) if settings.pod_ips_socket is not None else None
        self.server = _http.Server("metadata", self.handle, logs, idle_timeout=settings.idle_timeout,
                                   read_timeout=settings.read_timeout)

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        self.server.close()
        await self.upstream.close()
        if self.pod_ips is not None:
            await self.pod_ips.close()

    # -- the hot path --------------------------------------------------------
    def handle(self, request: _http.Request) -> Answer:
        started = time.perf_counter()
        route = _route_of(request.path)
        answer = self._dispatch(request, route)
        if isinstance(answer, _http.Response):
            self.counters.record(route, answer.status, time.perf_counter() - started)
            return answer
        return self._recorded(answer, route, started)

    async def _recorded(self, answer: Awaitable[_http.Response], route: str, started: float) -> _http.Response:
        response = await answer
        self.counters.record(route, response.status, time.perf_counter() - started)
        return response

    def _dispatch(self, request: _http.Request, route: str) -> Answer:
        headers = request.headers
        if "x-forwarded-for" in headers:
            # As EC2's IMDS: a forwarded request came through a proxy, and whoever
            # sent it is not the pod this source IP belongs to.
            return _FORWARDED
        ip = request.remote
        if ":" in ip:
            ip = _ipv6_caller(ip)
        if route == "token":
            if request.method != "PUT":
                return _PUT_ONLY
            return self._token(request, ip)
        if request.method != "GET" and request.method != "HEAD":
            return _GET_ONLY
        token = headers.get(_TOKEN)
        settings = self.settings
        if token is not None and not settings.disable_imdsv2:
            try:
                self.tokens.validate(ip, token)
            except _tokens.InvalidToken as error:
                self.counters.metrics.token_failures.labels(error.reason).inc()
                return _EMPTY[401]
        elif settings.require_imdsv2:
            self.counters.metrics.token_failures.labels("missing").inc()
            return _EMPTY[401]
        if route == "credentials" or route == "credentials-list" or route == "info":
            return self._credentials(request, route, ip)
        if route == "credentials-redirect":
            # IMDS and Kiam redirect to the listing; a relative Location keeps the
            # client on whatever address it used.
            return _REDIRECT
        return self._other(request, ip)

    def _credentials(self, request: _http.Request, route: str, ip: str) -> Answer:
        pod, creds = self.store.lookup(ip)
        if creds is not None:
            return self._serve(request, route, creds, pod, waited=False, learned=False)
        if pod is not None and pod.node_identity:
            return self._node_identity(request, route, ip, pod)
        wait = self.settings.credential_wait
        if wait > 0 or (pod is None and self.pod_ips is not None):
            return self._wait(request, route, ip, wait)
        return self._miss(request, ip, pod)

    async def _wait(self, request: _http.Request, route: str, ip: str, wait: float) -> _http.Response:
        store, counters = self.store, self.counters
        if wait > 0:
            counters.metrics.waits.inc()
        pod, creds = await store.wait_lookup(ip, wait, self.pod_ips.claims if self.pod_ips is not None else None)
        # Exact: nothing ran between the lookup and here, so an entry the store does not hold was learned.
        learned = pod is not None and store.pod(ip) is None
        if pod is not None and pod.node_identity:
            return await self._node_identity(request, route, ip, pod)
        if creds is None:
            return self._miss(request, ip, pod)
        return self._serve(request, route, creds, pod, waited=wait > 0, learned=learned)

    def _serve(self, request: _http.Request, route: str, creds: _store.Credentials, pod: wire.PodEntry | None,
               *, waited: bool, learned: bool) -> _http.Response:
        counters = self.counters
        if route == "credentials":
            if request.path[len(CREDENTIALS):] != creds.role_name:  # request.path is decoded
                counters.wrong_role.inc()
                return _EMPTY[404]
            response = creds.response
        elif route == "credentials-list":
            response = creds.role_response
        else:
            response = creds.info_response
        if learned and pod is not None:
            counters.learned.inc()
            if self.logs.first("learned", request.remote):
                logger.info("served a starting pod by the IP its node gave it",
                            extra={"source_ip": request.remote, "pod": f"{pod.namespace}/{pod.name}", "uid": pod.uid})
        else:
            (counters.waited_hit if waited else counters.hit).inc()
        return response

    def _miss(self, request: _http.Request, ip: str, pod: wire.PodEntry | None) -> _http.Response:
        self.counters.miss.inc()
        if pod is None:
            if self.logs.first("no pod known", ip):
                logger.info("no pod known at this IP", extra={"source_ip": ip, "path": request.path})
            return _text(404, f"podiam: no pod known at {ip} on this node\n")
        if self.logs.first("no credentials", ip):
            logger.info(
                "no servable credentials for the pod",
                extra={"source_ip": ip, "pod": f"{pod.namespace}/{pod.name}", "role_key": pod.role_key},
            )
        return _text(404, f"podiam: no credentials for pod {pod.namespace}/{pod.name} yet\n")

    def _node_identity(self, request: _http.Request, route: str, ip: str, pod: wire.PodEntry) -> Awaitable[_http.Response]:
        """One of the operator's own pods: the node's role, from the node's metadata service.

        Only the three iam/ paths an SDK reads, with a plain role name: nothing
        else of the node's metadata opens up for these pods either.
        """
        raw = request.raw_path
        if request.query or not _safe_for_upstream(raw) or (
                route == "credentials" and not _ROLE_NAME.fullmatch(raw[len(CREDENTIALS):])):
            return _ready(_EMPTY[404])
        self.counters.node_identity.inc()
        logger.debug("node identity for the operator's pod", extra={"pod": f"{pod.namespace}/{pod.name}", "path": request.path})
        return self._from_upstream(raw, ip)

    async def _from_upstream(self, path: str, ip: str) -> _http.Response:
        """``path`` from the node's real metadata service (or its cache): its answer, a bare 404/429, or 502."""
        try:
            answer = await self.upstream.get(path)
        except _upstream_cache.Throttled:
            return _EMPTY[429]
        except _upstream.UpstreamError as error:
            if self.logs.first("upstream failed", ip, logging.WARNING):
                logger.warning("upstream metadata service failed", extra={"source_ip": ip, "path": path, "error": str(error)})
            return _text(502, "podiam: the node's metadata service did not answer\n")
        if answer.status != 200:
            return _text(answer.status if answer.status in (404, 429) else 502)
        return _http.Response(200, answer.body, answer.content_type or "text/plain")

    def _token(self, request: _http.Request, ip: str) -> _http.Response:
        if self.settings.disable_imdsv2:
            return _text(404, "podiam: IMDSv2 tokens are disabled on this proxy (--disable-imdsv2)\n")
        try:
            ttl = _tokens.parse_ttl(request.headers.get(_TTL))
        except ValueError as error:
            return _text(400, f"{error}\n")
        self.counters.metrics.tokens.inc()
        return _text(200, self.tokens.issue(ip, ttl), headers=((TTL_HEADER, str(ttl)),))

    def _other(self, request: _http.Request, ip: str) -> Answer:
        raw = request.raw_path
        if request.query or not _safe_for_upstream(raw) or not any(pattern.fullmatch(raw) for pattern in self.allowed):
            return _EMPTY[404]
        return self._from_upstream(raw, ip)


async def _ready(response: _http.Response) -> _http.Response:
    return response
