"""The push client's failures in podiam's terms, against a real TLS listener on loopback (trustme certificates)."""

from __future__ import annotations

import errno
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import aiohttp
import trustme
from aiohttp import web

from metadata_proxy import wire
from podiam_operator._kits import push, tlsfiles
from localcluster import ports

pytestmark = pytest.mark.unit


def _files(directory: Path, ca: trustme.CA, leaf: trustme.LeafCert) -> tlsfiles.ClientTls:
    cert, key, bundle = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    ca.cert_pem.write_to_path(str(bundle))
    return tlsfiles.ClientTls(cert, key, bundle)


Start = Callable[[trustme.CA, trustme.LeafCert, int, str], Awaitable[int]]



@pytest.fixture
async def proxy_like() -> AsyncIterator[Start]:
    """An HTTPS listener that, like the proxy, requires a client certificate of its CA."""
    runners: list[web.AppRunner] = []

    async def start(ca: trustme.CA, server: trustme.LeafCert, status: int, body: str) -> int:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.configure_cert(context)
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        app = web.Application()

        async def answer(request: web.Request) -> web.Response:
            return web.Response(status=status, text=body)

        app.router.add_get(wire.STATUS_PATH, answer)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        port = ports.free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        runners.append(runner)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


async def _fail(client_tls: tlsfiles.ClientTls, port: int) -> str:
    client = push.Client(client_tls, server_name=wire.PROXY_SERVER_NAME, timeout=5, concurrency=1)
    try:
        with pytest.raises(push.PushFailed) as failure:
            await client.request("GET", f"https://127.0.0.1:{port}{wire.STATUS_PATH}", None, "status")
        return str(failure.value)
    finally:
        await client.close()


async def test_a_proxy_certificate_without_the_server_name_says_to_add_it(tmp_path: Path, proxy_like: Start) -> None:
    ca = trustme.CA()
    port = await proxy_like(ca, ca.issue_cert("kiam-agent"), 200, "{}")
    message = await _fail(_files(tmp_path, ca, ca.issue_cert(wire.OPERATOR_IDENTITY)), port)
    assert "the operator refused the proxy's certificate: it does not carry the DNS name 'podiam-proxy'" in message
    assert 'agent.json "hosts"' in message
    assert "Hostname mismatch" in message  # OpenSSL's own words stay, in brackets


async def test_a_proxy_certificate_from_another_ca_is_named_as_such(tmp_path: Path, proxy_like: Start) -> None:
    ca, other = trustme.CA(), trustme.CA()
    port = await proxy_like(ca, other.issue_cert(wire.PROXY_SERVER_NAME), 200, "{}")
    message = await _fail(_files(tmp_path, ca, ca.issue_cert(wire.OPERATOR_IDENTITY)), port)
    assert "it was not issued by a CA in the operator's CA file" in message


async def test_a_refused_client_certificate_is_a_hint_not_a_network_error(tmp_path: Path, proxy_like: Start) -> None:
    ca, other = trustme.CA(), trustme.CA()
    port = await proxy_like(ca, ca.issue_cert(wire.PROXY_SERVER_NAME), 200, "{}")
    # The operator trusts the proxy's CA but presents a certificate of another CA.
    client_tls = _files(tmp_path, ca, other.issue_cert(wire.OPERATOR_IDENTITY))
    message = await _fail(client_tls, port)
    assert "the proxy closed the connection without answering" in message
    assert "refuses the operator's client certificate" in message


async def test_a_403_for_another_identity_says_which_settings_to_align(tmp_path: Path, proxy_like: Start) -> None:
    ca = trustme.CA()
    body = '{"error": "client certificate must name \'kiam-server\'"}'
    port = await proxy_like(ca, ca.issue_cert(wire.PROXY_SERVER_NAME), 403, body)
    message = await _fail(_files(tmp_path, ca, ca.issue_cert(wire.OPERATOR_IDENTITY)), port)
    assert "the proxy refused the operator's client certificate: it must name the proxy's --operator-identity" in message
    assert "PODIAM_TLS_OPERATOR_IDENTITY" in message


async def test_other_http_errors_and_network_errors_are_not_blamed_on_tls(tmp_path: Path, proxy_like: Start) -> None:
    ca = trustme.CA()
    port = await proxy_like(ca, ca.issue_cert(wire.PROXY_SERVER_NAME), 500, "boom")
    client_tls = _files(tmp_path, ca, ca.issue_cert(wire.OPERATOR_IDENTITY))
    assert (await _fail(client_tls, port)).endswith("HTTP 500: boom")
    closed = await _fail(client_tls, ports.free_port())
    assert "ClientConnectorError" in closed
    assert "TLS" not in closed and "certificate" not in closed


@pytest.mark.parametrize("error", [aiohttp.ServerDisconnectedError(), aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer")],
                         ids=["closed", "reset"])
def test_a_bare_disconnect_hints_at_a_refused_client_certificate(error: aiohttp.ClientError) -> None:
    # Which of the two the operator sees after a TLS 1.3 refusal is a race: both get the hint.
    assert "refuses the operator's client certificate" in push.explain(error, wire.PROXY_SERVER_NAME)


def test_other_socket_errors_get_no_certificate_hint() -> None:
    message = push.explain(aiohttp.ClientOSError(errno.EHOSTUNREACH, "No route to host"), wire.PROXY_SERVER_NAME)
    assert "certificate" not in message and "No route to host" in message
