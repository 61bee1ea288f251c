"""EKS Pod Identity's container-credentials endpoint: ``GET /v1/credentials`` with the pod's token.

The SDKs' container provider (``AWS_CONTAINER_CREDENTIALS_FULL_URI`` =
``http://169.254.170.23/v1/credentials``) sends the file
``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` names, the pod's projected
ServiceAccount token, as the ``Authorization`` header, and reads
``AccessKeyId``, ``SecretAccessKey``, ``Token``, ``AccountId`` and
``Expiration``. The token (``_sa_tokens``) says which pod asks; the pod must
be one the operator pushed to this proxy, by uid, with a role.

Every refusal is answered here, in one place (:data:`STATUS`), as EKS's agent
answers: a JSON body ``{"code": ..., "message": ...}`` and never a credential.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import prometheus_client as prom
from aiohttp import web

from metadata_proxy import _guard, _iptables, _metrics, _ratelog, _sa_tokens, _settings, _store

logger = logging.getLogger(__name__)

PATH = "/v1/credentials"

# 400: no token, or not a token; 401: a token we cannot trust; 403: a trusted token for a pod not served here;
# 503: nothing to check tokens with yet, or the pod's credentials are not here (yet).
STATUS: dict[str, int] = {"malformed": 400, "unauthenticated": 401, "forbidden": 403, "unavailable": 503}

STORE = web.AppKey("store", _store.Store)
AUDIENCE = web.AppKey("audience", str)
LEEWAY = web.AppKey("leeway", float)
WAIT = web.AppKey("wait", float)
REQUESTS = web.AppKey("requests", prom.Counter)
LOGS = web.AppKey("logs", _ratelog.PerSource)


class _Refusal(Exception):
    def __init__(self, kind: str, code: str, message: str, claims: _sa_tokens.PodClaims | None = None) -> None:
        super().__init__(message)
        self.kind, self.code, self.message, self.claims = kind, code, message, claims


def _answer(kind: str, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=STATUS[kind])


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "").strip()
    if header[:7].lower() == "bearer ":
        header = header[7:].strip()
    if not header:
        raise _Refusal("malformed", "InvalidRequest",
                       "no Authorization header: send the pod's projected ServiceAccount token (the file "
                       "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE names)")
    return header


async def _credentials(request: web.Request) -> tuple[_sa_tokens.PodClaims, _store.Credentials]:
    store = request.app[STORE]
    token = _token(request)
    if not len(store.keys):
        raise _Refusal("unavailable", "ServiceUnavailable",
                       "this proxy holds no service-account keys yet (the operator pushes the API server's); try again")
    claims = _sa_tokens.verify(token, store.keys, request.app[AUDIENCE], request.app[LEEWAY])
    holder, creds = await store.wait_by_uid(claims.pod_uid, request.app[WAIT])
    if holder is None or (holder.namespace, holder.name) != (claims.namespace, claims.pod_name):
        other = store.by_name(claims.namespace, claims.pod_name)
        if other is not None:
            raise _Refusal("forbidden", "AccessDenied",
                           f"pod {claims.pod} is now uid {other.uid}: the token's pod (uid {claims.pod_uid}) is gone", claims)
        raise _Refusal("forbidden", "AccessDenied",
                       f"pod {claims.pod} (uid {claims.pod_uid}) has no role on this node: it is not bound to one "
                       "(kubectl get podrolebindings), or it runs on another node", claims)
    if holder.role_key is None:
        raise _Refusal("forbidden", "AccessDenied",
                       f"pod {claims.pod} reads the node's own identity, through the metadata service only", claims)
    if creds is None:
        raise _Refusal("unavailable", "CredentialsUnavailable",
                       f"pod {claims.pod} is bound, but its credentials are not on this node yet (or no longer valid); "
                       "try again", claims)
    return claims, creds


async def handle(request: web.Request) -> web.Response:
    requests = request.app[REQUESTS]
    if request.path != PATH:
        requests.labels("not_found").inc()
        return _answer_plain(404, "NotFound", f"no such path: the credentials are at {PATH}")
    if request.method not in ("GET", "HEAD"):
        requests.labels("method").inc()
        return _answer_plain(405, "MethodNotAllowed", "GET only", {"Allow": "GET"})
    try:
        claims, creds = await _credentials(request)
    except (_Refusal, _sa_tokens.Refused) as refusal:
        requests.labels(refusal.kind).inc()
        # Never the token: its key id, issuer and subject say whose it is.
        seen = refusal.claims if isinstance(refusal, _Refusal) else None
        if request.app[LOGS].first(f"container credentials {refusal.kind}", request.remote or "unknown"):
            logger.info("container credentials refused",
                        extra={"source_ip": request.remote, "code": refusal.code, "reason": refusal.message,
                               "status": STATUS[refusal.kind], **(_said(seen) if seen is not None else {})})
        return _answer(refusal.kind, refusal.code, refusal.message)
    requests.labels("served").inc()
    logger.debug("container credentials served", extra={"source_ip": request.remote, **_said(claims), "role": creds.role_arn})
    return web.Response(body=creds.container, content_type="application/json")


def _said(claims: _sa_tokens.PodClaims) -> dict[str, str]:
    return {"pod": claims.pod, "uid": claims.pod_uid, "kid": claims.kid, "iss": claims.issuer, "sub": claims.subject}


def _answer_plain(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


def make_app(store: _store.Store, metrics: _metrics.Metrics, logs: _ratelog.PerSource, *, audience: str, leeway: float,
             wait: float) -> web.Application:
    # A token is at most a few kB: anything with a body is not a credentials request.
    app = web.Application(client_max_size=1024, handler_args={"max_line_size": 8190, "max_field_size": 16384})
    app[STORE] = store
    app[AUDIENCE] = audience
    app[LEEWAY] = leeway
    app[WAIT] = wait
    app[LOGS] = logs
    app[REQUESTS] = prom.Counter(
        "podiam_proxy_container_credentials_requests",
        "Container-credentials requests by result: served, malformed (400), unauthenticated (401), forbidden (403), "
        "unavailable (503), not_found, method.",
        ["result"], registry=metrics.registry,
    )
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class Listener:
    """The endpoint's port, and with ``--iptables`` the rules that send 169.254.170.23:80 (and fd00:ec2::23) there."""

    def __init__(self, settings: _settings.ProxySettings, store: _store.Store, metrics: _metrics.Metrics, logs: _ratelog.PerSource,
                 caps: _guard.Caps, runner_args: Mapping[str, Any]) -> None:
        self.settings = settings
        store.keys.overlap = settings.service_account_key_overlap
        self.runner = web.AppRunner(
            make_app(store, metrics, logs, audience=settings.container_credentials_audience, leeway=settings.token_leeway,
                     wait=settings.credential_wait),
            handle_signals=False, shutdown_timeout=5, **runner_args,
        )
        # Behind the same guard as the metadata port (_guard): its own share of the descriptors, per-source cap, deadline.
        self._caps, self._metrics, self._logs = caps, metrics, logs
        self._listener: _guard.Listener | None = None
        self.ipv6: str | None = None

    def install_rules(self) -> None:
        """Before listening, as the metadata rule: kept on exit, removed by --remove-iptables-rules."""
        assert self.settings.host_ip is not None
        found = _iptables.node_ipv6()
        if _iptables.install_container_credentials(str(self.settings.host_ip), self.settings.container_credentials_port, found):
            self.ipv6 = found

    async def start(self) -> None:
        await self.runner.setup()
        port = self.settings.container_credentials_port
        addresses = [self.settings.bind_address]
        if self.ipv6 is not None and self.settings.bind_address in ("0.0.0.0", "::"):
            addresses.append(self.ipv6)  # the IPv6 rule's DNAT target: an IPv4 listener does not answer it
        assert self.runner.server is not None
        self._listener = _guard.Listener("credentials", self._caps, self.runner.server, self._metrics, self._logs)
        await self._listener.listen(list(dict.fromkeys(addresses)), port)
        logger.info("container credentials listening",
                    extra={"addresses": addresses, "port": port, "audience": self.settings.container_credentials_audience})

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self.runner.cleanup()
