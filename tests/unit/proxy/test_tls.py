"""The control port's TLS: files reloaded on change without a restart, peer identities."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

from metadata_proxy import _tls, wire
from localcluster import certs
from localcluster.proxy import client_tls_context

pytestmark = pytest.mark.unit


@pytest.fixture
async def tls_server(fresh_pki: certs.Pki) -> AsyncIterator[tuple[_tls.ServerTLS, int]]:
    """A bare TLS server with the proxy's reloading context; answers b"ok" after the handshake."""
    tls = _tls.ServerTLS(fresh_pki.server.cert, fresh_pki.server.key, fresh_pki.ca)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls.listener_context)
    port = server.sockets[0].getsockname()[1]
    yield tls, port
    server.close()
    await server.wait_closed()


async def handshake(port: int, ca: certs.Pki | Any, client: certs.CertFiles | None, sni: bool = True) -> dict[str, Any]:
    """Connect, read the server's b"ok", return the server certificate; raises when refused."""
    context = client_tls_context(ca.ca, client)
    if not sni:
        context.check_hostname = False  # no server_hostname: no SNI sent
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=wire.PROXY_SERVER_NAME if sni else None,
    )
    try:
        data = await asyncio.wait_for(reader.read(2), 5)
        if data != b"ok":
            raise ConnectionResetError("refused after the handshake")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return {"der": der}
    finally:
        writer.close()


def reissue_server(pki: certs.Pki) -> certs.CertFiles:
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    return pki.issue("server", wire.PROXY_SERVER_NAME, common_name=wire.PROXY_SERVER_NAME, not_after=later)


async def test_a_renewed_server_certificate_is_used_by_new_connections(tls_server: tuple[_tls.ServerTLS, int], fresh_pki: certs.Pki) -> None:
    tls, port = tls_server
    before = (await handshake(port, fresh_pki, fresh_pki.operator))["der"]
    assert not tls.reload_if_changed()  # nothing changed yet
    reissue_server(fresh_pki)
    assert tls.reload_if_changed()
    for sni in (True, False):  # also clients that send no server name
        after = (await handshake(port, fresh_pki, fresh_pki.operator, sni=sni))["der"]
        assert after != before


async def test_a_rotated_ca_refuses_old_clients_and_accepts_new_ones(tls_server: tuple[_tls.ServerTLS, int], fresh_pki: certs.Pki) -> None:
    tls, port = tls_server
    old_operator = fresh_pki.operator
    await handshake(port, fresh_pki, old_operator)
    fresh_pki.rotate_ca()
    reissue_server(fresh_pki)
    new_operator = fresh_pki.issue("operator-new", wire.OPERATOR_IDENTITY, common_name=wire.OPERATOR_IDENTITY)
    assert tls.reload_if_changed()
    await handshake(port, fresh_pki, new_operator)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(port, fresh_pki, old_operator)


async def test_broken_files_keep_the_last_good_context(tls_server: tuple[_tls.ServerTLS, int], fresh_pki: certs.Pki) -> None:
    tls, port = tls_server
    before = (await handshake(port, fresh_pki, fresh_pki.operator))["der"]
    fresh_pki.server.cert.write_text("-----BEGIN CERTIFICATE-----\nhalf-written\n")
    with pytest.raises(_tls.ReloadFailed):
        tls.reload_if_changed()
    assert (await handshake(port, fresh_pki, fresh_pki.operator))["der"] == before
    reissue_server(fresh_pki)  # the rotation completes: picked up on the next check
    assert tls.reload_if_changed()


async def test_the_watcher_picks_up_changes(fresh_pki: certs.Pki) -> None:
    expiries: list[dict[str, float]] = []
    outcomes: list[str] = []
    tls = _tls.ServerTLS(fresh_pki.server.cert, fresh_pki.server.key, fresh_pki.ca, on_load=expiries.append)
    watcher = asyncio.create_task(tls.watch(0.05, outcomes.append))
    try:
        renewed = reissue_server(fresh_pki)
        for _ in range(100):
            if outcomes:
                break
            await asyncio.sleep(0.02)
    finally:
        watcher.cancel()
    assert outcomes == ["reloaded"]
    assert len(expiries) == 2
    assert expiries[1]["cert"] < expiries[0]["cert"]  # the renewed one expires in 30 days, localcluster.certs' default in ten years
    assert renewed.cert.exists()


def test_a_missing_file_fails_at_start(fresh_pki: certs.Pki) -> None:
    with pytest.raises(OSError):
        _tls.ServerTLS(fresh_pki.server.cert, fresh_pki.directory / "nope.pem", fresh_pki.ca)


def test_peer_identities() -> None:
    assert _tls.peer_identities(None) == set()
    cert = {
        "subject": ((("organizationName", "x"),), (("commonName", "podiam-operator"),)),
        "subjectAltName": (("DNS", "alt-name"), ("IP Address", "10.0.0.1")),
    }
    assert _tls.peer_identities(cert) == {"podiam-operator", "alt-name"}
