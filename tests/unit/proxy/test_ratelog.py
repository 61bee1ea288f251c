"""Per-source log limits: the first line of each kind, then a count per interval; aiohttp's parse errors without tracebacks."""

from __future__ import annotations

import logging
import sys

import pytest
from aiohttp import http_exceptions

from metadata_proxy import _metrics, _ratelog

pytestmark = pytest.mark.unit


@pytest.fixture
def logs(metrics: _metrics.Metrics) -> _ratelog.PerSource:
    return _ratelog.PerSource(10, metrics)


def summaries(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [(r.source_ip, r.count) for r in caplog.records if r.getMessage().endswith("in the last 10 s")]  # type: ignore[attr-defined]


def test_the_first_of_a_kind_per_source_is_written_the_rest_counted(logs: _ratelog.PerSource, metrics: _metrics.Metrics,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "metadata_proxy")
    assert logs.first("miss", "10.0.0.1")
    assert [logs.first("miss", "10.0.0.1") for _ in range(5)] == [False] * 5
    assert logs.first("miss", "10.0.0.2")  # another source: its own first
    assert logs.first("malformed request", "10.0.0.1")  # another kind: its own first
    assert metrics.log_lines_suppressed.labels("miss")._value.get() == 5  # type: ignore[attr-defined]
    logs.flush()
    assert summaries(caplog) == [("10.0.0.1", 5)]
    assert caplog.records[-1].getMessage() == "5 more like this from 10.0.0.1 in the last 10 s"
    # Still coming: counted on, one summary per interval.
    assert not logs.first("miss", "10.0.0.1")
    logs.flush()
    assert summaries(caplog) == [("10.0.0.1", 5), ("10.0.0.1", 1)]
    # Quiet for a whole interval: forgotten, so its next line is a first again.
    logs.flush()
    assert logs.first("miss", "10.0.0.1")


def test_the_sources_tracked_are_bounded(logs: _ratelog.PerSource, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ratelog, "MAX_SOURCES", 3)
    assert all(logs.first("miss", f"10.0.0.{i}") for i in range(3))
    assert logs.first("miss", "10.0.0.9")  # the first of the rest, as "other sources"
    assert not logs.first("miss", "10.0.0.10")


def record_from_aiohttp(error: BaseException, source: str = "10.0.0.7") -> logging.LogRecord:
    """What aiohttp's RequestHandler.handle_error writes: log_exception("Error handling request from %s", remote, exc_info=exc)."""
    try:
        raise error
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord("metadata_proxy.http", logging.ERROR, __file__, 1, "Error handling request from %s", (source,), exc_info)


def test_a_malformed_request_is_one_line_naming_its_reason_and_no_traceback(logs: _ratelog.PerSource) -> None:
    errors = _ratelog.ServerErrors(logs)
    record = record_from_aiohttp(http_exceptions.BadHttpMessage("Invalid header token"))
    assert errors.filter(record)
    assert (record.getMessage(), record.levelname, record.exc_info) == ("malformed request", "INFO", None)
    assert (record.source_ip, record.reason) == ("10.0.0.7", "BadHttpMessage")  # type: ignore[attr-defined]
    assert not errors.filter(record_from_aiohttp(http_exceptions.LineTooLong("x", "8190")))  # counted
    assert errors.filter(record_from_aiohttp(http_exceptions.LineTooLong("x", "8190"), source="10.0.0.8"))


def test_other_server_errors_keep_their_traceback_once_per_source(logs: _ratelog.PerSource) -> None:
    errors = _ratelog.ServerErrors(logs)
    record = record_from_aiohttp(RuntimeError("a bug of ours"))
    assert errors.filter(record) and record.exc_info is not None and record.levelno == logging.ERROR
    assert not errors.filter(record_from_aiohttp(RuntimeError("a bug of ours")))
