"""The node's real metadata service, for the few paths pods are allowed to read.

The proxy asks with an IMDSv2 token of its own (fetched once, renewed before
it expires, refetched on a 401), so allowed paths work on nodes that require
IMDSv2, and pods never get to see or use that token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import aiohttp

logger = logging.getLogger(__name__)

_TOKEN_TTL = 21600
_RENEW_BEFORE = 300
# Connections to the node's metadata service at most: requests for one path share one (_upstream_cache).
CONNECTIONS = 8


@dataclasses.dataclass(frozen=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str


class UpstreamError(Exception):
    pass


class Upstream:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_expiry = 0.0
        self._token_lock = asyncio.Lock()

    async def start(self) -> None:
        # No proxy from the environment, no cookies: a plain link-local client.
        self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                                              connector=aiohttp.TCPConnector(limit=CONNECTIONS))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _fetch_token(self) -> str | None:
        assert self._session is not None
        async with self._session.put(
            f"{self.base_url}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(_TOKEN_TTL)}
        ) as response:
            if response.status == 200:
                return await response.text()
            # An IMDSv1-only service: go on without a token.
            logger.info("upstream metadata service gave no token (HTTP %s); using IMDSv1", response.status)
            return None

    async def _token_header(self, renew: bool = False) -> dict[str, str]:
        async with self._token_lock:
            if renew or self._token is None or time.monotonic() >= self._token_expiry:
                self._token = await self._fetch_token()
                self._token_expiry = time.monotonic() + _TOKEN_TTL - _RENEW_BEFORE
        return {"X-aws-ec2-metadata-token": self._token} if self._token else {}

    async def get(self, path: str) -> UpstreamResponse:
        """GET ``path`` (already checked against the allow-list) from the real service."""
        assert self._session is not None, "Upstream.start() first"
        try:
            for attempt in range(2):
                headers = await self._token_header(renew=attempt > 0)
                async with self._session.get(f"{self.base_url}{path}", headers=headers, allow_redirects=False) as response:
                    if response.status == 401 and attempt == 0:
                        continue  # our token expired or the service restarted
                    return UpstreamResponse(response.status, await response.read(), response.content_type)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise UpstreamError(f"{type(error).__name__}: {error}") from error
        raise UpstreamError("the metadata service refused the proxy's token twice")
