"""The pod-IP reader (``podiam-proxy --serve-pod-ips``) and the proxy's client of it.

The reader runs in a second container of the proxy's pod, as the only one
that may read the node's CNI result cache (``_cni``): user 0 without any
capability, the cache folder mounted read-only. It answers one question on a
Unix socket in a volume the two containers share, ``GET /v1/claims?ip=IP``:
which pods (uid, namespace, name, when) the node's runtime set up with that
IP. It decides nothing: the proxy serves such an IP only to a pod the
operator announced as starting on this node (``_store.Store.learn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from metadata_proxy import _cni

logger = logging.getLogger(__name__)

CLAIMS_PATH = "/v1/claims"
RESULTS = web.AppKey("results", _cni.Results)
TIMEOUT = 0.25  # the reader answers in about a millisecond; a request must not spend its pod's SDK timeout here
CONNECTIONS = 8  # to the reader at most (descriptors the metadata port's flood cannot multiply)
_WARN_EVERY = 60.0


async def _claims(request: web.Request) -> web.Response:
    try:
        ip = str(ipaddress.ip_address(request.query.get("ip", "")))
    except ValueError:
        return web.json_response({"error": "ip: not an IP address"}, status=400)
    claims = request.app[RESULTS].claims(ip)
    return web.json_response({"claims": [dataclasses.asdict(claim) for claim in claims]})


def make_app(results: _cni.Results) -> web.Application:
    app = web.Application(client_max_size=1024)
    app[RESULTS] = results
    app.router.add_get(CLAIMS_PATH, _claims)
    return app


async def serve(socket: Path, results: _cni.Results) -> None:
    """Answer on ``socket`` until SIGTERM."""
    runner = web.AppRunner(make_app(results), handle_signals=False, access_log=None)
    await runner.setup()
    socket.unlink(missing_ok=True)  # left by a previous run of this container
    await web.UnixSite(runner, str(socket)).start()
    # The proxy's container runs as another user; only the two containers of the pod share this volume.
    os.chmod(socket, 0o666)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    logger.info("answering which pod the node gave an IP to", extra={"socket": str(socket), "results": str(results.directory),
                                                                       "networks": results.networks.pattern})
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


class Client:
    """The proxy's side: the claims on an IP, or none when the reader does not answer (said in the log, at most once a minute)."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._session: aiohttp.ClientSession | None = None
        self._warned = 0.0

    async def claims(self, ip: str) -> list[_cni.Claim]:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket), limit=CONNECTIONS),
                                                  timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        try:
            async with self._session.get(f"http://pod-ips{CLAIMS_PATH}", params={"ip": ip}) as answer:
                answer.raise_for_status()
                body = await answer.json()
            return [_cni.Claim(**claim) for claim in body["claims"]]
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError) as error:
            if time.monotonic() - self._warned > _WARN_EVERY:
                self._warned = time.monotonic()
                logger.warning("the pod-IP reader did not answer: a starting pod waits for its IP from the operator",
                               extra={"socket": str(self.socket), "error": f"{type(error).__name__}: {error}"})
            return []

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
