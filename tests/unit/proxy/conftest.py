"""Fixtures for the proxy's unit tests: its apps on aiohttp test servers, a test PKI."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
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


ImdsFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def issuer(clock: Clock) -> _tokens.TokenIssuer:
    return _tokens.TokenIssuer(clock=clock)


@pytest.fixture
def imds(aiohttp_client: Any, store: _store.Store, metrics: _metrics.Metrics, issuer: _tokens.TokenIssuer) -> ImdsFactory:
    """``await imds(**settings)`` → a test client of the metadata app; ``source_ip`` picks the caller's address.

    Every app of one test shares the token issuer (one proxy's key)."""

    async def make(source_ip: str | None = None, **overrides: Any) -> TestClient[web.Request, web.Application]:
        app = _imds.make_app(settings(**overrides), store, metrics, _ratelog.PerSource(60, metrics), issuer)
        kwargs: dict[str, Any] = {}
        if source_ip:
            kwargs["connector"] = aiohttp.TCPConnector(local_addr=(source_ip, 0))
        return await aiohttp_client(app, **kwargs)  # type: ignore[no-any-return]

    return make


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
