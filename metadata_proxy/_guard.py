"""Caps and a deadline on every connection of a listener: one caller cannot starve the others.

Each connection is admitted or reset as it is accepted, before anything is
read from it:

- at most ``per_source`` open connections per source IP (one pod), and
  ``total`` in all;
- with ``total`` open, a connection that has not yet sent a complete request
  head (behind TLS: finished its handshake and sent one) is closed to make
  room: the newcomer's own source's oldest such, else the oldest of any
  source. Silent connections from many pods then cannot crowd out those that
  ask: a flooding source recycles its own slots, and a pod that asks takes
  one of theirs. With none such, the newcomer is reset;
- a connection has ``read_timeout`` from its accept to finish its first
  request head, TLS handshake included. After that aiohttp's keep-alive
  timeout closes it when idle, and also when a later head trickles in (that
  timer does not move while bytes arrive).

A reset is an RST (SO_LINGER 0): the descriptor is free at once, with no
TIME_WAIT. Each listener's ``total`` is its share of the process's
descriptors (``_descriptors``), so a flood on one port never takes what
another needs. One ``_Connection`` sits between each transport and aiohttp's
handler, passing its callbacks on (one function call per read on the hot
path). Plain ports count a connection as the event loop accepts it; the TLS
port accepts in a loop of its own and starts TLS on what it admits, so that a
connection counts for its source from its accept, not from the end of a
handshake it may never finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import cast

from metadata_proxy import _metrics, _ratelog

logger = logging.getLogger(__name__)

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST
REASONS = ("source_cap", "total_cap", "evicted", "read_timeout", "tls_failed")
_SAID = {
    "source_cap": "connection refused: too many open from this source",
    "total_cap": "connection refused: every connection of the port is in use",
    "evicted": "connection closed without a request, to make room for another",
    "read_timeout": "connection closed: no complete request head within the read timeout",
    "tls_failed": "connection closed: no TLS handshake",
}


@dataclasses.dataclass(frozen=True)
class Caps:
    per_source: int
    total: int
    read_timeout: float


class Listener:
    """One port's connections: admitted, counted by source, evicted, released."""

    def __init__(
        self,
        port: str,
        caps: Caps,
        handler_factory: Callable[[], asyncio.Protocol],
        metrics: _metrics.Metrics,
        logs: _ratelog.PerSource,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.caps = caps
        self.handler_factory = handler_factory
        self.ssl_context = ssl_context
        self.open = 0
        self._logs = logs
        self._server: asyncio.AbstractServer | None = None
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._by_source: dict[str, int] = {}
        # Admitted, no request head yet (evictable); oldest first, in all and by source.
        self._pending: dict[_Connection, None] = {}
        self._pending_of: dict[str, dict[_Connection, None]] = {}
        self._dropped = {reason: metrics.connections_dropped.labels(port, reason) for reason in REASONS}
        metrics.connections.labels(port).set_function(lambda: self.open)
        metrics.connections_max.labels(port).set(caps.total)

    def __call__(self) -> _Connection:
        return _Connection(self)

    async def listen(self, host: str | list[str], port: int) -> None:
        loop = asyncio.get_running_loop()
        if self.ssl_context is None:
            self._server = await loop.create_server(self, host, port, backlog=1024, reuse_address=True)
            return
        assert isinstance(host, str), "one address for the TLS port"
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=1024)
        sock.setblocking(False)
        self._socket = sock
        self._accepting = loop.create_task(self._accept(sock, self.ssl_context))

    def close(self) -> None:
        """Accept no more (connections already open are the runner's to close)."""
        if self._server is not None:
            self._server.close()
        if self._accepting is not None:
            self._accepting.cancel()
        if self._socket is not None:
            self._socket.close()

    async def _accept(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(sock)
            except OSError as error:  # out of descriptors after all, or a peer gone while queued
                if self._logs.first(f"{self.port} accept failed", "-", logging.WARNING):
                    logger.warning("accept failed", extra={"port": self.port, "error": str(error)})
                await asyncio.sleep(0.1)
                continue
            client.setblocking(False)
            connection = _Connection(self)
            if self.admit(connection, str(peer[0])):
                connection.handshake(client, context)
            else:
                _reset_socket(client)

    def admit(self, connection: _Connection, source: str) -> bool:
        held = self._by_source.get(source, 0)
        if held >= self.caps.per_source:
            self.dropped("source_cap", source, cap=self.caps.per_source)
            return False
        if self.open >= self.caps.total:
            victim = next(iter(self._pending_of.get(source) or self._pending), None)
            if victim is None:
                self.dropped("total_cap", source, cap=self.caps.total)
                return False
            self.dropped("evicted", victim.source)
            victim.reset()
        self._by_source[source] = held + 1
        self.open += 1
        self._pending[connection] = None
        self._pending_of.setdefault(source, {})[connection] = None
        connection.admitted(source)
        return True

    def asked(self, connection: _Connection, source: str) -> None:
        """``connection`` sent its first request head: no longer evictable."""
        if connection in self._pending:
            del self._pending[connection]
            own = self._pending_of[source]
            del own[connection]
            if not own:
                del self._pending_of[source]

    def release(self, connection: _Connection, source: str) -> None:
        self.asked(connection, source)
        self.open -= 1
        left = self._by_source[source] - 1
        if left:
            self._by_source[source] = left
        else:
            del self._by_source[source]

    def dropped(self, reason: str, source: str, **fields: object) -> None:
        self._dropped[reason].inc()
        if self._logs.first(f"{self.port} {reason}", source):
            logger.info(_SAID[reason], extra={"source_ip": source, "port": self.port, **fields})


class _Connection(asyncio.Protocol):
    __slots__ = ("_listener", "_transport", "source", "_handler", "_deadline", "_tail", "_handshake")

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None  # on the TLS port, from the end of the handshake
        self.source = ""  # set while admitted and counted
        self._handler: asyncio.Protocol | None = None
        self._deadline: asyncio.TimerHandle | None = None  # until the first request head
        self._tail = b""  # the last bytes read, for a head end split between two reads
        self._handshake: asyncio.Task[None] | None = None

    def admitted(self, source: str) -> None:
        self.source = source
        self._deadline = asyncio.get_running_loop().call_later(self._listener.caps.read_timeout, self._expire)

    def handshake(self, client: socket.socket, context: ssl.SSLContext) -> None:
        self._handshake = asyncio.get_running_loop().create_task(self._start_tls(client, context))

    async def _start_tls(self, client: socket.socket, context: ssl.SSLContext) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: self, client, ssl=context)
        except Exception as error:  # a handshake fails in many ways (SSLError, resets, EOF); a reset cancels it instead
            if self.source:
                self._listener.dropped("tls_failed", self.source, error=type(error).__name__)
                self._forget()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._listener.ssl_context is not None:  # the handshake is done; admitted as accepted
            self._attach()
            return
        peer = self._transport.get_extra_info("peername")
        if not self._listener.admit(self, str(peer[0]) if peer else "unknown"):
            _reset(self._transport)
        # aiohttp's handler comes with the first bytes: a connection that sends none costs little.

    def _attach(self) -> asyncio.Protocol:
        assert self._transport is not None
        handler = self._handler = self._listener.handler_factory()
        handler.connection_made(self._transport)
        return handler

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            window = self._tail + data
            if b"\r\n\r\n" in window or b"\n\n" in window:
                self._deadline.cancel()
                self._deadline = None
                self._listener.asked(self, self.source)
            else:
                self._tail = window[-3:]
        handler = self._handler
        if handler is None:
            if not self.source:
                return  # reset already
            handler = self._attach()
        handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.connection_lost(exc)

    def _forget(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.source:
            self._listener.release(self, self.source)
            self.source = ""

    def _expire(self) -> None:
        self._deadline = None
        self._listener.dropped("read_timeout", self.source, seconds=self._listener.caps.read_timeout)
        self.reset()

    def reset(self) -> None:
        """Its slot free now, its socket closed with an RST (the handler hears of it from connection_lost)."""
        self._forget()
        if self._transport is not None:
            _reset(self._transport)
        elif self._handshake is not None:
            self._handshake.cancel()  # closes it


def _reset(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()


def _reset_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()
