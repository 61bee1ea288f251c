"""The pods' lean HTTP/1.1 server (``_http``) on real sockets: keep-alive, pipelining, HTTP/1.0, strictness, limits, timeouts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from metadata_proxy import _guard, _http, _metrics, _ratelog

pytestmark = pytest.mark.unit

HOST = "127.0.0.1"


def handler(request: _http.Request) -> Any:
    if request.path == "/slow":
        async def later() -> _http.Response:
            await asyncio.sleep(0.05)
            return _http.Response(200, b"slow")
        return later()
    if request.path == "/boom":
        raise RuntimeError("a bug")
    return _http.Response(200, f"{request.method} {request.path} {request.query} {request.headers.get('x-a', '-')}".encode())


class Port:
    def __init__(self, server: _http.Server, port: int) -> None:
        self.server = server
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.port)

    async def exchange(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send ``data``, read until the server closes."""
        reader, writer = await self.connect()
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()


@pytest.fixture
def metrics() -> _metrics.Metrics:
    return _metrics.Metrics()


@pytest.fixture
async def port(metrics: _metrics.Metrics) -> AsyncIterator[Port]:
    server = _http.Server("test", handler, _ratelog.PerSource(60, metrics), idle_timeout=0.5, read_timeout=0.5)
    listener = await asyncio.get_running_loop().create_server(server.protocol, HOST, 0)
    yield Port(server, listener.sockets[0].getsockname()[1])
    server.close()
    listener.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


def statuses(raw: bytes) -> list[int]:
    """The status of each answer in ``raw`` (answers one after another, each with its Content-Length)."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        found.append(int(lines[0].split(b" ")[1]))
        length = next(int(line.split(b": ")[1]) for line in lines if line.startswith(b"Content-Length: "))
        raw = rest[length:]
    return found


async def test_keep_alive_answers_requests_one_after_another_on_one_connection(port: Port) -> None:
    reader, writer = await port.connect()
    for number in range(3):
        writer.write(f"GET /n{number}?q=1 HTTP/1.1\r\nHost: x\r\nX-A: v{number}\r\n\r\n".encode())
        status, headers, body = await read_answer(reader)
        assert (status, body) == (200, f"GET /n{number} q=1 v{number}".encode())
        assert "connection" not in headers and headers["content-type"] == "text/plain" and "date" in headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order_even_when_one_waits(port: Port) -> None:
    reader, writer = await port.connect()
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    bodies = [(await read_answer(reader))[2] for _ in range(3)]
    assert bodies == [b"GET /a  -", b"slow", b"GET /b  -"]
    writer.close()


async def test_thousands_of_pipelined_requests_in_one_write_are_answered_in_order(port: Port) -> None:
    requests = b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % number for number in range(5000))
    started = asyncio.get_running_loop().time()
    raw = await port.exchange(requests + b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [200] * 5001 and raw.endswith(b"GET /last  -")
    assert raw.index(b"GET /4999  -") > raw.index(b"GET /10  -") > raw.index(b"GET /9  -")
    assert asyncio.get_running_loop().time() - started < 5  # offsets into the buffer, not a copy of it per request


async def test_a_small_body_is_read_and_dropped_and_the_next_request_follows(port: Port) -> None:
    reader, writer = await port.connect()
    writer.write(b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel")
    await asyncio.sleep(0.05)
    writer.write(b"loGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [(await read_answer(reader))[2] for _ in range(2)] == [b"PUT /a  -", b"GET /b  -"]
    writer.close()


async def test_http_1_0_is_closed_after_its_answer_unless_it_asks_for_keep_alive(port: Port) -> None:
    raw = await port.exchange(b"GET /a HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in raw and raw.endswith(b"GET /a  -")
    reader, writer = await port.connect()
    for _ in range(2):
        writer.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_connection_close_closes_after_the_answer(port: Port) -> None:
    raw = await port.exchange(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n")
    assert statuses(raw) == [200] and b"/never" not in raw


async def test_head_has_the_length_of_the_get_and_no_body(port: Port) -> None:
    raw = await port.exchange(b"HEAD /a HTTP/1.1\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 10\r\n" in head and body == b""


async def test_a_half_closed_connection_still_gets_its_answers(port: Port) -> None:
    reader, writer = await port.connect()
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    writer.write_eof()
    raw = await asyncio.wait_for(reader.read(), 5)
    assert statuses(raw) == [200, 200] and raw.endswith(b"GET /b  -")
    writer.close()


async def test_a_half_closed_connection_with_an_incomplete_request_is_closed_at_once(port: Port) -> None:
    reader, writer = await port.connect()
    writer.write(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHost:")
    writer.write_eof()
    started = asyncio.get_running_loop().time()
    raw = await asyncio.wait_for(reader.read(), 5)
    assert statuses(raw) == [200] and asyncio.get_running_loop().time() - started < 0.4  # not the 0.5 s idle timeout
    writer.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /a HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),  # obs-fold
    (b"GET /a HTTP/1.1\r\nX A: 1\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\r\n: empty name\r\n\r\n", 400),
    (b"get /a HTTP/1.1\r\n\r\n", 400),
    (b"GET  /a HTTP/1.1\r\n\r\n", 400),
    (b"GET /a\r\n\r\n", 400),
    (b"GET /a HTTP/2.0\r\n\r\n", 505),
    (b"GET /a FTP/1.0\r\n\r\n", 400),
    (b"GET http://169.254.169.254/a HTTP/1.1\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\n\r\n", 400),
    (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\nHost: x\n\n", 400),  # bare LF
    (b"GET /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nxx", 400),
    (b"GET /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400),
    (b"PUT /a HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", 413),
    (b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 501),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /" + b"a" * 9000, 414),  # no line end yet: refused before it comes
    (b"GET /a HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /a HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(5)) + b"\r\n", 431),  # head > 16 KiB
    (b"GET /a HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
])
async def test_malformed_or_oversized_requests_are_refused_and_closed(port: Port, request_bytes: bytes, status: int) -> None:
    raw = await port.exchange(request_bytes + b"GET /after HTTP/1.1\r\n\r\n")
    assert statuses(raw) == [status], raw[:200]
    assert b"Connection: close\r\n" in raw and b"/after" not in raw


async def test_the_largest_accepted_request(port: Port) -> None:
    head = b"GET /a HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"X-A: " + b"b" * 8000 + b"\r\n\r\n"
    raw = await port.exchange(head + b"GET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [200, 200]


async def test_a_handler_error_is_a_500_and_the_traceback_goes_to_the_log(port: Port, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="metadata_proxy._http"):
        raw = await port.exchange(b"GET /boom HTTP/1.1\r\n\r\n")
    assert statuses(raw) == [500]
    assert any(record.exc_info for record in caplog.records)


async def test_malformed_requests_are_logged_once_per_source_then_counted(port: Port, metrics: _metrics.Metrics,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="metadata_proxy._http"):
        for _ in range(3):
            await port.exchange(b"GET /a HTTP/1.1\r\nNo colon\r\n\r\n")
    lines = [record for record in caplog.records if record.getMessage() == "malformed request"]
    assert len(lines) == 1 and lines[0].reason == "BadHttpMessage" and lines[0].source_ip == HOST  # type: ignore[attr-defined]
    assert metrics.registry.get_sample_value("podiam_proxy_log_lines_suppressed_total", {"kind": "malformed request"}) == 2


async def test_a_head_trickling_in_after_an_answer_is_closed_at_the_idle_timeout(port: Port) -> None:
    reader, writer = await port.connect()
    writer.write(b"GET /a HTTP/1.1\r\n\r\n")
    assert (await read_answer(reader))[0] == 200
    started = asyncio.get_running_loop().time()
    for byte in b"GET /b HTTP/1.1\r\nX-A: slowly":  # one byte every 50 ms: never complete within 0.5 s
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
        if reader.at_eof():
            break
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.45 < asyncio.get_running_loop().time() - started < 2.0
    writer.close()


async def test_an_idle_kept_alive_connection_is_closed_and_a_waiting_one_is_not(port: Port) -> None:
    reader, writer = await port.connect()
    writer.write(b"GET /a HTTP/1.1\r\n\r\n")
    await read_answer(reader)
    await asyncio.sleep(0.3)
    writer.write(b"GET /b HTTP/1.1\r\n\r\n")  # within the idle timeout of the last answer: answered, timer moves
    assert (await read_answer(reader))[2] == b"GET /b  -"
    await asyncio.sleep(0.3)
    writer.write(b"GET /c HTTP/1.1\r\n\r\n")
    assert (await read_answer(reader))[2] == b"GET /c  -"
    assert await asyncio.wait_for(reader.read(), 2) == b""  # then nothing: closed after 0.5 s
    writer.close()


async def test_a_body_that_never_comes_is_cut_off(port: Port) -> None:
    started = asyncio.get_running_loop().time()
    raw = await port.exchange(b"PUT /a HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly this")
    assert raw == b"" and asyncio.get_running_loop().time() - started < 2.0


async def test_behind_the_guard_a_silent_or_slow_first_request_is_reset_at_the_read_timeout(metrics: _metrics.Metrics) -> None:
    logs = _ratelog.PerSource(60, metrics)
    server = _http.Server("metadata", handler, logs, idle_timeout=5, read_timeout=5)
    guard = _guard.Listener("metadata", _guard.Caps(per_source=8, total=64, read_timeout=0.3), server.protocol, metrics, logs)
    await guard.listen(HOST, 0)
    assert guard._server is not None
    port = Port(server, guard._server.sockets[0].getsockname()[1])
    try:
        reader, writer = await port.connect()
        writer.write(b"GET /a HTTP/1.1\r\nHost: x")  # slowloris: never the end of the head
        started = asyncio.get_running_loop().time()
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        assert asyncio.get_running_loop().time() - started < 2.0
        writer.close()
        assert metrics.registry.get_sample_value("podiam_proxy_connections_dropped_total",
                                                 {"port": "metadata", "reason": "read_timeout"}) == 1
        raw = await port.exchange(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")  # a prompt request is served
        assert statuses(raw) == [200]
    finally:
        guard.close()
        server.close()


async def test_closing_the_server_closes_its_connections_and_cancels_waits(port: Port) -> None:
    reader, writer = await port.connect()
    writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.01)
    assert len(port.server.connections) == 1
    port.server.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
