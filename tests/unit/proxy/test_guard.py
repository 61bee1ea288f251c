"""Connection caps and the read deadline of a listener, on real loopback sockets.

Each test runs under asyncio's loop and uvloop's: the proxy runs on uvloop, and the two differ in
when they start reading and how they start TLS.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from aiohttp import web

from metadata_proxy import _guard, _metrics, _ratelog
from localcluster import certs, ports
from localcluster.proxy import client_tls_context

pytestmark = pytest.mark.unit

HOST = "127.0.0.90"
A, B = "127.0.90.1", "127.0.90.2"
HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Port:
    def __init__(self, listener: _guard.Listener, port: int, metrics: _metrics.Metrics) -> None:
        self.listener, self.port, self.metrics = listener, port, metrics

    def dropped(self, reason: str) -> float:
        return self.metrics.connections_dropped.labels("test", reason)._value.get()  # type: ignore[attr-defined,no-any-return]


Serve = Callable[..., Awaitable[Port]]


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop: str, scenario: Callable[[Serve], Awaitable[None]]) -> None:
    """``scenario(serve)`` on a fresh ``loop``; ``await serve(...)`` starts a listener, all closed at the end."""
    async def main() -> None:
        opened: list[tuple[_guard.Listener, web.Server]] = []

        async def serve(per_source: int = 2, total: int = 10, read_timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> Port:
            async def ok(request: web.BaseRequest) -> web.Response:
                return web.Response(text="ok")

            metrics = _metrics.Metrics()
            server = web.Server(ok)
            listener = _guard.Listener("test", _guard.Caps(per_source, total, read_timeout), server, metrics,
                                       _ratelog.PerSource(60, metrics), tls)
            port = ports.free_port(HOST)
            await listener.listen(HOST, port)
            opened.append((listener, server))
            return Port(listener, port, metrics)

        try:
            await scenario(serve)
        finally:
            for listener, server in opened:
                listener.close()
                await server.shutdown(0.1)

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


async def connect(port: Port, source: str, tls: ssl.SSLContext | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port.port, local_addr=(source, 0), ssl=tls,
                                         server_hostname="podiam-proxy" if tls else None)


async def closed(reader: asyncio.StreamReader, within: float = 2.0) -> bool:
    """Whether the server closed or reset the connection within ``within`` seconds."""
    try:
        await asyncio.wait_for(reader.read(), within)
    except (ConnectionError, ssl.SSLError):
        return True
    except asyncio.TimeoutError:
        return False
    return True


async def answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(HEAD)
    return (await asyncio.wait_for(reader.readuntil(b"ok"), 2)).startswith(b"HTTP/1.1 200")


async def settle(condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not settled")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_source_holds_its_cap_and_no_more_and_other_sources_are_unaffected(loop: str) -> None:
    async def scenario(serve: Serve) -> None:
        port = await serve(per_source=2)
        held = [await connect(port, A) for _ in range(2)]
        refused, kept = await connect(port, A)
        assert await closed(refused, 1.0)  # reset at once, nothing read
        other = await connect(port, B)
        assert await answered(*other)
        assert await answered(*held[0])  # the cap refuses newcomers, never what is open
        await settle(lambda: port.listener.open == 3)
        assert port.dropped("source_cap") == 1
        for _, writer in [*held, other]:
            writer.close()
        await settle(lambda: port.listener.open == 0)
        assert await answered(*await connect(port, A))  # its slots back

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_silent_and_trickling_connections_end_at_the_read_timeout_and_asking_ones_do_not(loop: str) -> None:
    async def scenario(serve: Serve) -> None:
        port = await serve(read_timeout=0.3)
        silent, kept = await connect(port, A)
        trickling, trickle = await connect(port, A)
        trickle.write(HEAD[:20])
        asking = await connect(port, B)
        assert await answered(*asking)
        assert await closed(silent, 1.0) and await closed(trickling, 1.0)
        assert not await closed(asking[0], 0.5)  # past the deadline: its request came in time
        assert port.dropped("read_timeout") == 2
        await settle(lambda: port.listener.open == 1)

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_head_split_between_reads_counts_once_complete(loop: str) -> None:
    async def scenario(serve: Serve) -> None:
        port = await serve(read_timeout=0.5)
        reader, writer = await connect(port, A)
        writer.write(HEAD[:-3])
        await asyncio.sleep(0.1)
        writer.write(HEAD[-3:])
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 2)).startswith(b"HTTP/1.1 200")
        assert not await closed(reader, 0.7)

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_full_port_makes_room_from_the_newcomers_source_then_any_never_from_those_that_asked(loop: str) -> None:
    async def scenario(serve: Serve) -> None:
        port = await serve(per_source=5, total=4)
        asked = await connect(port, B)
        assert await answered(*asked)
        a_silent_pairs = [await connect(port, A) for _ in range(3)]  # writers kept: a collected one closes its connection
        a_silent = [reader for reader, _ in a_silent_pairs]
        await settle(lambda: port.listener.open == 4)
        # Full. A's newcomer takes A's own oldest silent slot; B's takes A's next; what asked stays.
        a_new = await connect(port, A)
        assert await closed(a_silent[0], 1.0)
        b_new = await connect(port, B)
        assert await closed(a_silent[1], 1.0)
        assert await answered(*a_new) and await answered(*b_new) and await answered(*asked)
        assert not await closed(a_silent[2], 0.2)
        assert port.dropped("evicted") == 2
        # Only connections that asked, and A's last silent one: evict it, then nothing is left to evict.
        b_third = await connect(port, B)
        assert await answered(*b_third)
        assert await closed(a_silent[2], 1.0)
        refused, kept = await connect(port, B)
        assert await closed(refused, 1.0)
        assert port.dropped("total_cap") == 1
        await settle(lambda: port.listener.open == 4)

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_connections_count_from_their_accept_not_from_their_handshake(loop: str, pki: certs.Pki) -> None:
    async def scenario(serve: Serve) -> None:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        server_context.verify_mode = ssl.CERT_REQUIRED
        server_context.load_cert_chain(*pki.server.pair)
        client = client_tls_context(pki.ca, pki.operator)
        port = await serve(per_source=2, read_timeout=0.5, tls=server_context)
        silent_pairs = [await connect(port, A) for _ in range(2)]  # no ClientHello
        silent = [reader for reader, _ in silent_pairs]
        await settle(lambda: port.listener.open == 2)
        refused, kept = await connect(port, A)
        assert await closed(refused, 1.0)
        assert port.dropped("source_cap") == 1
        operator = await connect(port, B, tls=client)
        assert await answered(*operator)
        assert all([await closed(reader, 1.5) for reader in silent])  # the deadline covers the handshake
        assert port.dropped("read_timeout") == 2
        assert not await closed(operator[0], 0.3)
        operator[1].close()
        await settle(lambda: port.listener.open == 0)
        # A client that fails the handshake (no certificate) frees its slot too.
        anonymous = client_tls_context(pki.ca, None)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await connect(port, A, tls=anonymous)
            writer.write(HEAD)
            await reader.readuntil(b"ok")
        await settle(lambda: port.listener.open == 0)

    run(loop, scenario)
