"""A lean HTTP/1.1 server for the pods' ports: strict parsing, keep-alive, pipelining, answers from bytes.

The metadata port answers tiny GETs with bytes rendered when the
credentials arrived; a general framework's request and response objects
cost more than the answer itself. So this protocol parses a request head
with a few ``bytes`` operations and one regular expression over the whole
header block, calls the port's handler synchronously, and writes its
answer; a handler that has to wait (for a push, for the node's metadata
service) returns an awaitable, and the connection reads nothing further
until its answer is written, so pipelined requests are answered in order.

Strict, with limits (what does not fit is answered 400, 413, 414, 431,
501 or 505 with ``Connection: close``, and logged once per source and kind
through ``_ratelog``):

- request line ``METHOD SP origin-form SP HTTP/1.x``, at most
  ``MAX_LINE`` bytes; visible ASCII only in the target;
- header fields ``name: value`` (token names, no obs-fold, no control
  characters), each at most ``MAX_LINE`` bytes, at most ``MAX_HEADERS``
  of them, the head at most ``MAX_HEAD`` bytes;
- a body only with ``Content-Length`` (at most ``MAX_BODY``, read and
  dropped); ``Transfer-Encoding`` is refused (no request smuggling);
- HTTP/1.0 is closed after its answer unless it asks for keep-alive.

Timeouts (the deadline of the first request head is ``_guard``'s): a
connection is closed when its next request (head and body) is not complete
``idle_timeout`` after the previous answer, also when its bytes trickle in;
the first request's body gets ``read_timeout`` from the connection's
start. The timer is re-armed lazily (one timestamp per answer).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from urllib.parse import unquote

from metadata_proxy import _ratelog

logger = logging.getLogger(__name__)

MAX_LINE = 8190
MAX_HEADERS = 100
MAX_HEAD = 16384
MAX_BODY = 1024
# Unprocessed bytes held while an answer is on its way (pipelined requests): beyond it, reading pauses.
MAX_BUFFERED = MAX_HEAD + MAX_BODY

_REASONS = {
    200: "OK", 301: "Moved Permanently", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 414: "URI Too Long", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
_METHOD = re.compile(rb"[A-Z]{1,20}")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
# Every header line of a head, each followed by CRLF: token ":" OWS field-value OWS (obs-text allowed in values).
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*(?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?[ \t]*\r\n)*")
# Headers that say where a request ends, or whom it is for: one of each at most.
_SINGLE = frozenset({"content-length", "transfer-encoding", "host"})


class Request:
    """One parsed request. ``headers``: lower-case names; ``path``: percent-decoded; ``raw_path`` as sent."""

    __slots__ = ("method", "raw_path", "path", "query", "headers", "remote")

    def __init__(self, method: str, raw_path: str, query: str, headers: dict[str, str], remote: str) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = unquote(raw_path, errors="surrogateescape") if "%" in raw_path else raw_path
        self.query = query
        self.headers = headers
        self.remote = remote


class Response:
    """An answer: ``render`` writes it; the head of its keep-alive form is rendered once (answers are reused)."""

    __slots__ = ("status", "body", "content_type", "headers", "_head", "_tail")

    def __init__(self, status: int, body: bytes = b"", content_type: str = "text/plain",
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self._head: bytes | None = None
        self._tail = b"\r\n" + body

    def head(self, close: bool) -> bytes:
        """The status line and headers but Date; the keep-alive form kept."""
        if self._head is not None and not close:
            return self._head
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\nContent-Type: {self.content_type}\r\n"
                f"Content-Length: {len(self.body)}\r\n{extra}{'Connection: close' + chr(13) + chr(10) if close else ''}"
                ).encode("latin-1")
        if not close:
            self._head = head
        return head


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class HttpError(Exception):
    """A request that cannot be parsed or is over a limit: answered ``status``, then the connection closes."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the kind, for the log (as aiohttp named them)


class _Date:
    """The Date header, formatted once a second."""

    __slots__ = ("second", "line")

    def __init__(self) -> None:
        self.second = 0
        self.line = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.line = f"Date: {formatdate(second, usegmt=True)}\r\n".encode()
        return self.line


_DATE = _Date()


def render(response: Response, head_only: bool, close: bool) -> bytes:
    if head_only:
        return response.head(close) + _DATE.now() + b"\r\n"
    return response.head(close) + _DATE.now() + response._tail


class Server:
    """One port's handler, its timeouts and its open connections; ``protocol`` makes one per connection."""

    def __init__(self, name: str, handler: Handler, logs: _ratelog.PerSource, *, idle_timeout: float, read_timeout: float,
                 max_line: int = MAX_LINE) -> None:
        self.name = name
        self.handler = handler
        self.logs = logs
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_line = max_line
        self.connections: set[HttpProtocol] = set()

    def protocol(self) -> HttpProtocol:
        return HttpProtocol(self)

    def close(self) -> None:
        """Close every open connection (a request waiting is cancelled)."""
        for connection in list(self.connections):
            connection.close()


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("_server", "_transport", "_remote", "_buffer", "_pos", "_task", "_paused", "_reading_paused", "_closing",
                 "_last", "_limit", "_timer", "_eof", "_loop")

    def __init__(self, server: Server) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._buffer = b""
        self._pos = 0  # where the next request starts in _buffer (offsets: pipelined requests cost no copies)
        self._task: asyncio.Future[Response] | None = None
        self._paused = False  # the transport's write buffer is full
        self._reading_paused = False
        self._closing = False
        self._eof = False
        self._loop = asyncio.get_running_loop()
        self._last = 0.0  # when the current wait for a request began (the connection, then each answer)
        self._limit = server.read_timeout
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if peer else ""
        self._server.connections.add(self)
        self._last = self._loop.time()
        self._timer = self._loop.call_later(self._limit, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer = self._buffer + data if self._buffer else data
        if self._task is not None or self._paused:
            if len(self._buffer) - self._pos > MAX_BUFFERED and not self._reading_paused:
                self._reading_paused = True
                self._transport.pause_reading()  # type: ignore[union-attr]
            return
        self._process()

    def eof_received(self) -> bool | None:
        # The client will send nothing more: answer the requests it sent (a half-closed socket still reads), then
        # close. Anything left in the buffer otherwise is an incomplete request, which can never complete now.
        self._eof = True
        if self._task is not None or (self._paused and self._pos < len(self._buffer)):
            return True
        return None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._task is None and not self._closing:
            self._process()

    # -- requests ----------------------------------------------------------
    def close(self) -> None:
        if self._transport is not None and not self._closing:
            self._closing = True
            self._transport.close()

    def _check_idle(self) -> None:
        self._timer = None
        if self._closing:
            return
        waited = self._loop.time() - self._last
        if self._task is not None or waited < self._limit:
            # An answer on its way counts as activity; otherwise the deadline moved with the last answer.
            self._timer = self._loop.call_later(self._limit if self._task is not None else self._limit - waited,
                                                self._check_idle)
            return
        self.close()

    def _process(self) -> None:
        transport = self._transport
        assert transport is not None
        handler = self._server.handler
        while self._pos < len(self._buffer) and not self._closing and not self._paused:
            try:
                parsed = self._parse()
            except HttpError as error:
                self._buffer, self._pos = b"", 0
                self._refuse(error)
                return
            if parsed is None:
                break  # more bytes to come
            request, head_only, keep_alive = parsed
            try:
                answer = handler(request)
            except Exception:  # a bug, not the client's: a 500 and the traceback, once per source
                if self._server.logs.first("server error", self._remote, logging.ERROR):
                    logger.exception("error handling a request", extra={"source_ip": self._remote, "port": self._server.name})
                answer = Response(500)
                keep_alive = False
            if isinstance(answer, Response):
                self._answer(answer, head_only, keep_alive)
                continue
            task = self._task = asyncio.ensure_future(answer)
            task.add_done_callback(lambda done: self._finished(done, head_only, keep_alive))
            self._compact()
            return
        self._compact()
        if self._eof and self._task is None and not self._closing:
            self.close()
        elif self._reading_paused and not self._closing and self._task is None and not self._paused:
            self._reading_paused = False
            transport.resume_reading()

    def _compact(self) -> None:
        if self._pos:
            self._buffer = self._buffer[self._pos:]
            self._pos = 0

    def _finished(self, task: asyncio.Future[Response], head_only: bool, keep_alive: bool) -> None:
        if task is not self._task or task.cancelled():
            return  # the connection went meanwhile
        self._task = None
        error = task.exception()
        if error is not None:
            if self._server.logs.first("server error", self._remote, logging.ERROR):
                logger.error("error handling a request", exc_info=error, extra={"source_ip": self._remote, "port": self._server.name})
            self._answer(Response(500), head_only, False)
            return
        self._answer(task.result(), head_only, keep_alive)
        if not self._closing:
            self._process()

    def _answer(self, response: Response, head_only: bool, keep_alive: bool) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(render(response, head_only, not keep_alive))
        self._last = self._loop.time()
        self._limit = self._server.idle_timeout
        if not keep_alive:
            self.close()

    def _refuse(self, error: HttpError) -> None:
        if self._server.logs.first("malformed request", self._remote):
            logger.info("malformed request", extra={"source_ip": self._remote, "port": self._server.name,
                                                    "reason": error.reason, "error": str(error)})
        self._answer(Response(error.status, f"{error}\n".encode()), False, False)

    def _parse(self) -> tuple[Request, bool, bool] | None:
        """The next complete request in the buffer (consumed), None while it is incomplete; HttpError if it is bad."""
        buffer, start = self._buffer, self._pos
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            self._incomplete(buffer, start)
            return None
        line_end = buffer.find(b"\r\n", start)
        if line_end - start > self._server.max_line:
            raise HttpError(414, "LineTooLong", f"request line over {self._server.max_line} bytes")
        if end - start > MAX_HEAD:
            raise HttpError(431, "LineTooLong", f"request head over {MAX_HEAD} bytes")
        line = buffer[start:line_end]
        parts = line.split(b" ")
        if len(parts) != 3:
            raise HttpError(400, "BadStatusLine", "the request line is not METHOD SP target SP version")
        method, target, version = parts
        if version == b"HTTP/1.1":
            keep_alive = True
        elif version == b"HTTP/1.0":
            keep_alive = False
        elif version.startswith(b"HTTP/"):
            raise HttpError(505, "BadHttpMessage", "HTTP/1.1 or HTTP/1.0 only")
        else:
            raise HttpError(400, "BadStatusLine", "no HTTP version in the request line")
        if _METHOD.fullmatch(method) is None:
            raise HttpError(400, "BadStatusLine", "invalid method")
        if _TARGET.fullmatch(target) is None:
            raise HttpError(400, "InvalidURLError", "the target must be a path (origin-form), visible ASCII only")
        headers: dict[str, str] = {}
        if line_end < end:
            block = buffer[line_end + 2:end + 2]
            if _FIELDS.fullmatch(block) is None:
                raise HttpError(400, "BadHttpMessage", "invalid header line")
            lines = block.split(b"\r\n")
            lines.pop()
            if len(lines) > MAX_HEADERS:
                raise HttpError(431, "BadHttpMessage", f"more than {MAX_HEADERS} header fields")
            for field in lines:
                if len(field) > self._server.max_line:
                    raise HttpError(431, "LineTooLong", f"a header line over {self._server.max_line} bytes")
                name, _, value = field.partition(b":")
                key = name.decode("latin-1").lower()
                text = value.strip(b" \t").decode("latin-1")
                held = headers.get(key)
                if held is None:
                    headers[key] = text
                elif key in _SINGLE:
                    raise HttpError(400, "BadHttpMessage", f"{key} given twice")
                else:
                    headers[key] = f"{held}, {text}"
        consumed = end + 4
        if headers:
            if "transfer-encoding" in headers:
                raise HttpError(501, "BadHttpMessage", "Transfer-Encoding is not accepted: requests here have no body")
            length_text = headers.get("content-length")
            if length_text is not None:
                if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > 12:
                    raise HttpError(400, "BadHttpMessage", "invalid Content-Length")
                length = int(length_text)
                if length > MAX_BODY:
                    raise HttpError(413, "HTTPRequestEntityTooLarge", f"a body over {MAX_BODY} bytes")
                if len(buffer) < consumed + length:
                    return None  # the body is on its way (the idle timer bounds the wait)
                consumed += length
            connection = headers.get("connection")
            if connection is not None:
                options = connection.lower()
                if "close" in options:
                    keep_alive = False
                elif not keep_alive and "keep-alive" in options:
                    keep_alive = True
        if self._eof and consumed == len(buffer):
            keep_alive = False  # the last request the client sent
        self._pos = consumed
        method_text = method.decode()
        path, _, query = target.decode("ascii").partition("?")
        return Request(method_text, path, query, headers, self._remote), method_text == "HEAD", keep_alive

    def _incomplete(self, buffer: bytes, start: int) -> None:
        line_end = buffer.find(b"\r\n", start)
        if (line_end < 0 and len(buffer) - start > self._server.max_line) or line_end - start > self._server.max_line:
            raise HttpError(414, "LineTooLong", f"request line over {self._server.max_line} bytes")
        if len(buffer) - start > MAX_HEAD:
            raise HttpError(431, "LineTooLong", f"request head over {MAX_HEAD} bytes")
        if buffer.find(b"\n\n", start) >= 0 or buffer.find(b"\n\r\n", start) >= 0:
            raise HttpError(400, "BadHttpMessage", "lines must end with CRLF")
