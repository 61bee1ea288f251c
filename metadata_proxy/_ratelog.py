"""Logging a pod cannot turn into a flood: per source, the first line of each kind, then a count.

Whatever a pod sends (malformed requests, requests for credentials it has
none of, connections over its cap), the node's log gets the first line of
each kind from each source in full, and then, once per interval while more
keep coming, ``N more like this from <source> in the last T s``. A source
quiet for a whole interval starts over: its next line is written in full.

``ServerErrors`` puts aiohttp's own server log through the same rule: a
request aiohttp cannot parse is the client's problem, one line naming the
reason class (no traceback); anything else keeps its traceback, once per
source and interval.
"""

from __future__ import annotations

import dataclasses
import logging

from aiohttp import http_exceptions

from metadata_proxy import _metrics

logger = logging.getLogger(__name__)

# Sources tracked at once; beyond it (never on a real node: pods' IPs) one entry per kind counts them all.
MAX_SOURCES = 4096
OTHER_SOURCES = "other sources"


@dataclasses.dataclass(slots=True)
class _Seen:
    level: int
    more: int = 0


class PerSource:
    def __init__(self, interval: float, metrics: _metrics.Metrics) -> None:
        self.interval = interval
        self._metrics = metrics
        self._seen: dict[tuple[str, str], _Seen] = {}

    def first(self, kind: str, source: str, level: int = logging.INFO) -> bool:
        """True: write this line (the first of ``kind`` from ``source`` lately); False: it was counted instead."""
        key = (kind, source)
        seen = self._seen.get(key)
        if seen is None and len(self._seen) >= MAX_SOURCES:
            key = (kind, OTHER_SOURCES)
            seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(level)
            return True
        seen.more += 1
        self._metrics.log_lines_suppressed.labels(kind).inc()
        return False

    def flush(self) -> None:
        """Write the counts of the interval that ended; forget the sources that were quiet in it."""
        for (kind, source), seen in list(self._seen.items()):
            if seen.more:
                logger.log(seen.level, "%d more like this from %s in the last %g s", seen.more, source, self.interval,
                           extra={"source_ip": source, "kind": kind, "count": seen.more})
                seen.more = 0
            else:
                del self._seen[(kind, source)]


class ServerErrors(logging.Filter):
    """On the logger aiohttp's servers write their errors to (``logger=`` of the runners)."""

    def __init__(self, logs: PerSource) -> None:
        super().__init__()
        self._logs = logs

    def filter(self, record: logging.LogRecord) -> bool:
        # aiohttp writes "Error handling request from %s" with the peer's address as the one argument.
        args = record.args if isinstance(record.args, tuple) else ()
        source = str(args[0]) if args else "unknown"
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, http_exceptions.HttpProcessingError):
            return self._logs.first("server error", source, record.levelno)
        if not self._logs.first("malformed request", source):
            return False
        record.msg, record.args, record.levelno, record.levelname = "malformed request", (), logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        record.source_ip, record.reason = source, type(error).__name__
        return True
