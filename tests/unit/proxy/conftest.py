"""Fixtures for the proxy's unit tests: its apps on aiohttp test servers, a test PKI, ServiceAccount token signers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from metadata_proxy import _control, _health, _imds, _metrics, _ratelog, _settings, _store, _tls, _tokens, wire
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


# -- ServiceAccount tokens (the container-credentials path) ----------------------------------------------------------

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "pods.eks.amazonaws.com"
CURVES: dict[str, ec.EllipticCurve] = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}


def b64(data: bytes) -> str:
    """base64url without padding, as JWS writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """A service-account signing key, as kube-apiserver holds one; ``jwk`` is what its JWKS publishes.

    ``key``: a private key to use (RSA keys take tens of milliseconds to generate), else a new one for ``algorithm``.
    """

    def __init__(self, algorithm: str = "ES256", kid: str | None = None, key: Any = None) -> None:
        rsa_family = algorithm.startswith("RS")
        self.key: Any = key if key is not None else (rsa.generate_private_key(65537, 2048) if rsa_family
                                                    else ec.generate_private_key(CURVES[algorithm]))
        self.algorithm = algorithm
        self.kid = kid or uuid.uuid4().hex
        algo = jwt.algorithms.RSAAlgorithm if rsa_family else jwt.algorithms.ECAlgorithm
        self.jwk: dict[str, str] = {**json.loads(algo.to_jwk(self.key.public_key())), "kid": self.kid, "alg": self.algorithm,
                                    "use": "sig"}

    def claims(self, pod: tuple[str, str, str] | None = ("team", "app", "uid-1"), **claims: Any) -> dict[str, Any]:
        """What kube-apiserver writes into a pod's projected token, with ``claims`` added or replaced."""
        now = int(time.time())
        namespace = pod[0] if pod else "team"
        body: dict[str, Any] = {
            "iss": ISSUER, "aud": [AUDIENCE], "sub": f"system:serviceaccount:{namespace}:app-sa",
            "iat": now, "nbf": now, "exp": now + 3600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": "app-sa", "uid": "sa-uid"}},
        }
        if pod is not None:
            body["kubernetes.io"]["pod"] = {"name": pod[1], "uid": pod[2]}
        return body | claims

    def token(self, pod: tuple[str, str, str] | None = ("team", "app", "uid-1"), *, kid: str | None = None,
              algorithm: str | None = None, **claims: Any) -> str:
        return jwt.encode(self.claims(pod, **claims), self.key, algorithm=algorithm or self.algorithm,
                          headers={"kid": kid or self.kid})

    def sign(self, payload: bytes, **header: Any) -> str:
        """Any payload, signed: for payloads no JWT library writes."""
        return jwt.PyJWS().encode(payload, self.key, self.algorithm, headers={"kid": self.kid} | header)


def keys(*signers: Signer, issuer: str = ISSUER) -> wire.ServiceAccountKeys:
    return wire.ServiceAccountKeys(issuer=issuer, keys=[s.jwk for s in signers])


def forged_hs256(signer: Signer) -> str:
    """The classic confusion: an HMAC "signed" with the public key, under the real key's id."""
    public = signer.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "kid": signer.kid}).encode())
    body = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}).encode())
    signature = b64(hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"


def unsigned(signer: Signer) -> str:
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}, None, algorithm="none",
                      headers={"kid": signer.kid})
