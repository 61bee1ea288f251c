"""The pods' metadata API: EC2 IMDS as SDKs expect it, for the caller's source IP only.

One handler dispatches on the path (a few string comparisons, cheaper than
the router's resource walk on the hot path) so that a credentials GET costs
two dict lookups and returns bytes rendered when the credentials arrived.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time

from aiohttp import web

from metadata_proxy import _metrics, _pod_ips, _ratelog, _settings, _store, _tokens, _upstream, _upstream_cache, wire

logger = logging.getLogger(__name__)

STORE = web.AppKey("store", _store.Store)
METRICS = web.AppKey("metrics", _metrics.Metrics)
SETTINGS = web.AppKey("settings", _settings.ProxySettings)
TOKENS = web.AppKey("tokens", _tokens.TokenIssuer)
UPSTREAM = web.AppKey("upstream", _upstream_cache.CachedUpstream)
ALLOWED = web.AppKey("allowed", list[re.Pattern[str]])
POD_IPS = web.AppKey("pod_ips", _pod_ips.Client)
LOGS = web.AppKey("logs", _ratelog.PerSource)

TOKEN_PATH = "/latest/api/token"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/"
CREDENTIALS_NO_SLASH = CREDENTIALS[:-1]
INFO = "/latest/meta-data/iam/info"

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"

_TEXT = "text/plain"
# What IAM accepts as a role name: the one path segment forwarded for a node-identity pod.
_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)


def _text(status: int, body: str | bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body if isinstance(body, bytes) else body.encode(), content_type=_TEXT, headers=headers)


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
        self._requests: dict[tuple[str, int], object] = {}
        self._latency: dict[str, object] = {}
        self.hit = metrics.credentials.labels("hit")
        self.waited_hit = metrics.credentials.labels("waited_hit")
        self.miss = metrics.credentials.labels("miss")
        self.wrong_role = metrics.credentials.labels("wrong_role")
        self.node_identity = metrics.credentials.labels("node_identity")
        self.learned = metrics.credentials.labels("learned")

    def record(self, route: str, status: int, seconds: float) -> None:
        child = self._requests.get((route, status))
        if child is None:
            child = self._requests[(route, status)] = self.metrics.requests.labels(route, str(status))
        child.inc()  # type: ignore[attr-defined]
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = self.metrics.latency.labels(route)
        histogram.observe(seconds)  # type: ignore[attr-defined]


COUNTERS = web.AppKey("counters", _Counters)


async def _from_upstream(request: web.Request, path: str, ip: str) -> web.Response:
    """``path`` from the node's real metadata service (or its cache): its answer, a bare 404/429, or 502."""
    try:
        answer = await request.app[UPSTREAM].get(path)
    except _upstream_cache.Throttled:
        return _text(429, b"")
    except _upstream.UpstreamError as error:
        if request.app[LOGS].first("upstream failed", ip, logging.WARNING):
            logger.warning("upstream metadata service failed", extra={"source_ip": ip, "path": path, "error": str(error)})
        return _text(502, "podiam: the node's metadata service did not answer\n")
    if answer.status != 200:
        return _text(answer.status if answer.status in (404, 429) else 502, b"")
    return web.Response(body=answer.body, content_type=answer.content_type or _TEXT)


async def _node_identity(request: web.Request, route: str, ip: str, pod: wire.PodEntry) -> web.Response:
    """One of the operator's own pods: the node's role, from the node's metadata service.

    Only the three iam/ paths an SDK reads, with a plain role name: nothing
    else of the node's metadata opens up for these pods either.
    """
    raw = request.rel_url.raw_path
    if request.rel_url.raw_query_string or not _safe_for_upstream(raw):
        return _text(404, b"")
    if route == "credentials" and not _ROLE_NAME.fullmatch(raw[len(CREDENTIALS):]):
        return _text(404, b"")
    request.app[COUNTERS].node_identity.inc()
    logger.debug("node identity for the operator's pod", extra={"pod": f"{pod.namespace}/{pod.name}", "path": request.path})
    return await _from_upstream(request, raw, ip)


async def _credentials(request: web.Request, route: str, ip: str) -> web.Response:
    app = request.app
    store, counters = app[STORE], app[COUNTERS]
    pod, creds = store.lookup(ip)
    waited = learned = False
    if creds is None and not (pod is not None and pod.node_identity):
        wait = app[SETTINGS].credential_wait
        pod_ips = app.get(POD_IPS)
        if wait > 0 or (pod is None and pod_ips is not None):
            if wait > 0:
                counters.metrics.waits.inc()
                waited = True
            pod, creds = await store.wait_lookup(ip, wait, pod_ips.claims if pod_ips is not None else None)
            # Exact: nothing ran between the lookup and here, so an entry the store does not hold was learned.
            learned = pod is not None and store.pod(ip) is None
    if pod is not None and pod.node_identity:
        return await _node_identity(request, route, ip, pod)
    if creds is None:
        counters.miss.inc()
        logs = app[LOGS]
        if pod is None:
            if logs.first("no pod known", ip):
                logger.info("no pod known at this IP", extra={"source_ip": ip, "path": request.path})
            return _text(404, f"podiam: no pod known at {ip} on this node\n")
        if logs.first("no credentials", ip):
            logger.info(
                "no servable credentials for the pod",
                extra={"source_ip": ip, "pod": f"{pod.namespace}/{pod.name}", "role_key": pod.role_key},
            )
        return _text(404, f"podiam: no credentials for pod {pod.namespace}/{pod.name} yet\n")
    if route == "credentials-list":
        body = creds.role_name.encode()
    elif route == "info":
        body = creds.info
    else:
        if request.path[len(CREDENTIALS):] != creds.role_name:  # request.path is decoded
            counters.wrong_role.inc()
            return _text(404, b"")
        body = creds.document
    if learned and pod is not None:
        counters.learned.inc()
        if app[LOGS].first("learned", ip):
            logger.info("served a starting pod by the IP its node gave it",
                        extra={"source_ip": ip, "pod": f"{pod.namespace}/{pod.name}", "uid": pod.uid})
    else:
        (counters.waited_hit if waited else counters.hit).inc()
    return web.Response(body=body, content_type=_TEXT)


async def _token(request: web.Request, ip: str) -> web.Response:
    if request.app[SETTINGS].disable_imdsv2:
        return _text(404, "podiam: IMDSv2 tokens are disabled on this proxy (--disable-imdsv2)\n")
    try:
        ttl = _tokens.parse_ttl(request.headers.get(TTL_HEADER))
    except ValueError as error:
        return _text(400, f"{error}\n")
    request.app[COUNTERS].metrics.tokens.inc()
    return _text(200, request.app[TOKENS].issue(ip, ttl), headers={TTL_HEADER: str(ttl)})


async def _other(request: web.Request, ip: str) -> web.Response:
    raw = request.rel_url.raw_path
    if request.rel_url.raw_query_string or not _safe_for_upstream(raw) or not any(
        pattern.fullmatch(raw) for pattern in request.app[ALLOWED]
    ):
        return _text(404, b"")
    return await _from_upstream(request, raw, ip)


async def _dispatch(request: web.Request, route: str) -> web.Response:
    app = request.app
    if "X-Forwarded-For" in request.headers:
        # As EC2's IMDS: a forwarded request came through a proxy, and whoever
        # sent it is not the pod this source IP belongs to.
        return _text(403, "podiam: requests with X-Forwarded-For are refused\n")
    ip = request.remote or ""
    if ":" in ip:
        ip = _ipv6_caller(ip)
    if route == "token":
        if request.method != "PUT":
            return _text(405, b"", headers={"Allow": "PUT"})
        return await _token(request, ip)
    if request.method not in ("GET", "HEAD"):
        return _text(405, b"", headers={"Allow": "GET"})
    token = request.headers.get(TOKEN_HEADER)
    settings = app[SETTINGS]
    if token is not None and not settings.disable_imdsv2:
        try:
            app[TOKENS].validate(ip, token)
        except _tokens.InvalidToken as error:
            app[COUNTERS].metrics.token_failures.labels(error.reason).inc()
            return _text(401, b"")
    elif settings.require_imdsv2:
        app[COUNTERS].metrics.token_failures.labels("missing").inc()
        return _text(401, b"")
    if route in ("credentials", "credentials-list", "info"):
        return await _credentials(request, route, ip)
    if route == "credentials-redirect":
        # IMDS and Kiam redirect to the listing; a relative Location keeps the
        # client on whatever address it used.
        return _text(301, b"", headers={"Location": CREDENTIALS})
    return await _other(request, ip)


async def handle(request: web.Request) -> web.Response:
    started = time.perf_counter()
    route = _route_of(request.path)
    response = await _dispatch(request, route)
    request.app[COUNTERS].record(route, response.status, time.perf_counter() - started)
    return response


async def _upstream_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    await app[UPSTREAM].start()
    yield
    await app[UPSTREAM].close()
    pod_ips = app.get(POD_IPS)
    if pod_ips is not None:
        await pod_ips.close()


def make_app(
    settings: _settings.ProxySettings,
    store: _store.Store,
    metrics: _metrics.Metrics,
    logs: _ratelog.PerSource,
    tokens: _tokens.TokenIssuer | None = None,
) -> web.Application:
    # Requests are tiny; anything with a body is not a metadata request.
    app = web.Application(client_max_size=1024, handler_args={"max_line_size": 8190, "max_field_size": 8190})
    app[SETTINGS] = settings
    app[STORE] = store
    app[TOKENS] = tokens or _tokens.TokenIssuer()
    app[COUNTERS] = _Counters(metrics)
    app[ALLOWED] = [re.compile(pattern) for pattern in settings.allow_route]
    app[LOGS] = logs
    bucket = _upstream_cache.TokenBucket(settings.upstream_rate, settings.upstream_burst, time.monotonic)
    app[UPSTREAM] = _upstream_cache.CachedUpstream(_upstream.Upstream(str(settings.upstream), settings.upstream_timeout),
                                                   settings.upstream_cache_ttl, bucket, metrics)
    if settings.pod_ips_socket is not None:
        app[POD_IPS] = _pod_ips.Client(settings.pod_ips_socket)
    app.cleanup_ctx.append(_upstream_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
