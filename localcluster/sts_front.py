"""A small HTTP front for moto_server: counts STS actions and injects faults.

Run as ``python -m localcluster.sts_front --port P --upstream URL``. Control
endpoints live under ``/_front/``; everything else is forwarded to moto.
``/_front/calls`` lists the AssumeRole requests forwarded to moto with their
role, session name, external id, session tags (``Tags.member.N.Key/Value``),
transitive tag keys, and the access key and region of their signature (which
credentials made the call: with the keys ``/_front/keys`` maps to roles, a
test sees a role chain).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import random
import re
import urllib.parse

from aiohttp import ClientSession, web


@dataclasses.dataclass
class Faults:
    error_rate: float = 0.0
    error_status: int = 503
    error_code: str = "ServiceUnavailable"
    latency: float = 0.0
    deny_roles: str | None = None
    # Deterministic faults: the next ``fail_first`` requests get the error (before any ``error_rate``),
    # only AssumeRole requests for roles matching ``fail_roles`` when it is set; ``seed`` seeds the rate.
    fail_first: int = 0
    fail_roles: str | None = None
    seed: int | None = None


@dataclasses.dataclass
class Stats:
    actions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    assumed: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    injected: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    # AssumeRole requests forwarded to moto, in order: {"RoleArn", "RoleSessionName", "ExternalId" (None: absent), "Tags": {key: value},
    # "TransitiveTagKeys": [...], "Caller": access key id of the signature, "Region": its credential scope's region}.
    calls: list[dict[str, object]] = dataclasses.field(default_factory=list)


FAULTS = web.AppKey("faults", Faults)
RANDOM = web.AppKey("random", random.Random)
STATS = web.AppKey("stats", Stats)
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", ClientSession)
# Every AccessKeyId moto issued through this front -> the RoleArn it was assumed for, so that
# tests can tell which role a credential document served to a pod belongs to.
KEYS = web.AppKey("keys", dict[str, str])
_ACCESS_KEY_ID = re.compile(r"<AccessKeyId>([^<]+)</AccessKeyId>|\"AccessKeyId\"\s*:\s*\"([^\"]+)\"")
# SigV4: "AWS4-HMAC-SHA256 Credential=<access key id>/<date>/<region>/sts/aws4_request, ..."
_SIGNATURE = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/")

_ERROR_BODY = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    "<Code>{code}</Code><Message>{message}</Message></Error><RequestId>front</RequestId></ErrorResponse>"
)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, text=_ERROR_BODY.format(code=code, message=message), content_type="text/xml")


async def get_stats(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    return web.json_response({"actions": stats.actions, "assumed": stats.assumed, "injected": stats.injected})


async def get_calls(request: web.Request) -> web.Response:
    return web.json_response({"calls": request.app[STATS].calls})


def session_tags(params: dict[str, str]) -> dict[str, str]:
    """``Tags.member.N.Key`` / ``Tags.member.N.Value`` (the query protocol's list encoding) as a dict."""
    tags = {}
    for name, key in params.items():
        found = re.fullmatch(r"Tags\.member\.(\d+)\.Key", name)
        if found:
            tags[key] = params.get(f"Tags.member.{found.group(1)}.Value", "")
    return tags


def transitive_keys(params: dict[str, str]) -> list[str]:
    """``TransitiveTagKeys.member.N``, in order."""
    found = [(int(m.group(1)), value) for name, value in params.items() if (m := re.fullmatch(r"TransitiveTagKeys\.member\.(\d+)", name))]
    return [value for _, value in sorted(found)]


async def get_keys(request: web.Request) -> web.Response:
    # Kept across stats resets: credentials issued before a reset are still being served.
    return web.json_response(request.app[KEYS])


async def reset_stats(request: web.Request) -> web.Response:
    request.app[STATS] = Stats()
    return web.json_response({})


async def put_faults(request: web.Request) -> web.Response:
    body = await request.json()
    for pattern in ("deny_roles", "fail_roles"):
        if body.get(pattern):
            re.compile(body[pattern])
    request.app[FAULTS] = Faults(**body)
    request.app[RANDOM] = random.Random(request.app[FAULTS].seed)
    return web.json_response(dataclasses.asdict(request.app[FAULTS]))


async def forward(request: web.Request) -> web.StreamResponse:
    app = request.app
    faults, stats = app[FAULTS], app[STATS]
    body = await request.read()
    params = dict(urllib.parse.parse_qsl(body.decode(errors="replace"))) | dict(request.query)
    action = params.get("Action", "?")
    stats.actions[action] += 1
    if faults.latency:
        await asyncio.sleep(faults.latency)
    targeted = faults.fail_roles is None or (action == "AssumeRole" and re.fullmatch(faults.fail_roles, params.get("RoleArn", "")))
    if targeted and faults.fail_first > 0:
        faults.fail_first -= 1
        stats.injected[faults.error_code] += 1
        return _error(faults.error_status, faults.error_code, "injected by the test's STS front")
    if targeted and faults.error_rate and app[RANDOM].random() < faults.error_rate:
        stats.injected[faults.error_code] += 1
        return _error(faults.error_status, faults.error_code, "injected by the test's STS front")
    if action == "AssumeRole":
        role_arn = params.get("RoleArn", "")
        if faults.deny_roles and re.fullmatch(faults.deny_roles, role_arn):
            stats.injected["AccessDenied"] += 1
            return _error(403, "AccessDenied", f"User is not authorized to perform: sts:AssumeRole on resource: {role_arn}")
        stats.assumed[role_arn] += 1
        signature = _SIGNATURE.search(request.headers.get("Authorization", ""))
        stats.calls.append({"RoleArn": role_arn, "RoleSessionName": params.get("RoleSessionName", ""),
                            "ExternalId": params.get("ExternalId"), "Tags": session_tags(params),
                            "TransitiveTagKeys": transitive_keys(params), "Caller": signature.group(1) if signature else "",
                            "Region": signature.group(2) if signature else ""})
    headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}}
    async with app[SESSION].request(request.method, app[UPSTREAM] + request.path_qs, data=body, headers=headers) as upstream:
        payload = await upstream.read()
        if action == "AssumeRole" and upstream.status == 200:
            found = _ACCESS_KEY_ID.search(payload.decode(errors="replace"))
            if found:
                app[KEYS][found.group(1) or found.group(2)] = params.get("RoleArn", "")
        return web.Response(status=upstream.status, body=payload, content_type=upstream.content_type)


async def _client_session(app: web.Application):  # type: ignore[no-untyped-def]
    app[SESSION] = ClientSession()
    yield
    await app[SESSION].close()


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[FAULTS] = Faults()
    app[RANDOM] = random.Random()
    app[STATS] = Stats()
    app[UPSTREAM] = upstream.rstrip("/")
    app[KEYS] = {}
    app.cleanup_ctx.append(_client_session)
    app.router.add_get("/_front/stats", get_stats)
    app.router.add_delete("/_front/stats", reset_stats)
    app.router.add_get("/_front/keys", get_keys)
    app.router.add_get("/_front/calls", get_calls)
    app.router.add_put("/_front/faults", put_faults)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.upstream), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
