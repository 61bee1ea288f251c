"""Fixtures for the proxy's unit tests: its apps on aiohttp test servers, a test PKI."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from metadata_proxy import _control, _health, _imds, _metrics, _ratelog, _settings, _store, _tls, _tokens
from localcluster import certs, proxy

POD_IP = "127.0.0.1"  # where the aiohttp test client connects from


class Clock:
    """A settable wall clock for expiry rules."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> _settings.ProxySettings:
    base: dict[str, Any] = {"node_name": "node-unit", "credential_wait": 0, "upstream": "http://127.0.0.1:9"}
    return _settings.ProxySettings(**(base | overrides))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> _metrics.Metrics:
    return _metrics.Metrics()


@pytest.fixture
def store(clock: Clock, metrics: _metrics.Metrics) -> _store.Store:
    store = _store.Store(expiry_margin=300, clock=clock)
    metrics.watch_store(store)
    return store


class ImdsClient:
    """The metadata port (``_imds.Imds`` on a real socket) and an aiohttp client session to it, as aiohttp's TestClient."""

    def __init__(self, session: aiohttp.ClientSession, base: str, imds: _imds.Imds) -> None:
        self.session = session
        self.base = base
        self.imds = imds

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)


ImdsFactory = Callable[..., Awaitable[ImdsClient]]


@pytest.fixture
def issuer(clock: Clock) -> _tokens.TokenIssuer:
    return _tokens.TokenIssuer(clock=clock)


@pytest.fixture
async def imds(store: _store.Store, metrics: _metrics.Metrics, issuer: _tokens.TokenIssuer) -> AsyncIterator[ImdsFactory]:
    """``await imds(**settings)`` → a client of the metadata port; ``source_ip`` picks the caller's address.

    Every port of one test shares the token issuer (one proxy's key)."""
    opened: list[tuple[asyncio.AbstractServer, _imds.Imds, aiohttp.ClientSession]] = []

    async def make(source_ip: str | None = None, **overrides: Any) -> ImdsClient:
        port = _imds.Imds(settings(**overrides), store, metrics, _ratelog.PerSource(60, metrics), issuer)
        await port.start()
        server = await asyncio.get_running_loop().create_server(port.server.protocol, POD_IP, 0)
        connector = aiohttp.TCPConnector(local_addr=(source_ip, 0)) if source_ip else aiohttp.TCPConnector()
        session = aiohttp.ClientSession(connector=connector)
        opened.append((server, port, session))
        return ImdsClient(session, f"http://{POD_IP}:{server.sockets[0].getsockname()[1]}", port)

    yield make
    for server, port, session in opened:
        await session.close()
        server.close()
        await port.close()
        await server.wait_closed()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def fresh_pki(tmp_path: Path) -> certs.Pki:
    """A PKI of its own, for tests that rotate files."""
    return certs.make_pki(tmp_path / "pki")


@pytest.fixture
async def control_server(
    aiohttp_server: Any, store: _store.Store, metrics: _metrics.Metrics, pki: certs.Pki
) -> TestServer:
    tls = _tls.ServerTLS(pki.server.cert, pki.server.key, pki.ca)
    return await aiohttp_server(_control.make_app(store, metrics, "node-unit"), ssl=tls.listener_context)  # type: ignore[no-any-return]


def operator_session(pki: certs.Pki, client: certs.CertFiles | None = None) -> aiohttp.ClientSession:
    context = proxy.client_tls_context(pki.ca, client if client is not None else pki.operator)
    # The server is reached by IP; its certificate names PROXY_SERVER_NAME.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


def control_url(server: TestServer, path: str) -> str:
    return f"https://{server.host}:{server.port}{path}"


@pytest.fixture
async def health(aiohttp_client: Any, store: _store.Store, metrics: _metrics.Metrics) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(_health.make_app(store, metrics))  # type: ignore[no-any-return]


def ssl_error_types() -> tuple[type[BaseException], ...]:
    return (aiohttp.ClientError, ssl.SSLError, ConnectionError, OSError)
