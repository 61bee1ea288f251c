"""A pod cannot flood its node's logs through the proxy: the first of each kind per source, then a count.

A real proxy process; one source sends malformed requests, another asks for
credentials it has none of, a third is reset for holding too many
connections, each a few hundred times: each source gets its first line in
full (the reason class, no traceback) and then one summary per interval
saying how many more there were, so the log grows by a bounded number of
lines whatever the pods send.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metadata_proxy import wire
from localcluster import certs
from localcluster.proxy import ProxyProcess, http_request, pod_entry, role_credentials

pytestmark = pytest.mark.fault

HOST = "127.0.0.64"
POD = "127.0.64.1"
MALFORMED, STRANGER, GREEDY = "127.0.64.2", "127.0.64.3", "127.0.64.4"
CREDS = "/latest/meta-data/iam/security-credentials/"
REPEATS = 300
INTERVAL = 1.0


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    running = ProxyProcess(tmp_path, certs.make_pki(tmp_path / "pki"), HOST, args=[
        "--credential-wait", "0", "--log-summary-interval", f"{INTERVAL}s", "--max-connections-per-source", "4"]).start()
    running.push_snapshot(wire.Snapshot(generation=1, roles=[role_credentials("k", "Role")], pods=[pod_entry(POD, "k")]))
    try:
        yield running
    finally:
        running.stop()


def malformed(proxy: ProxyProcess, source: str) -> bytes:
    with socket.create_connection((proxy.host, proxy.metadata_port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(b"GET " + CREDS.encode() + b" HTTP/1.1\r\nHost: 169.254.169.254\r\nNo colon here\r\n\r\n")
        return sock.recv(1024)


def lines_from(proxy: ProxyProcess, source: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry.get("source_ip") == source]


def summarised(entries: list[dict[str, Any]]) -> int:
    return sum(int(entry["count"]) for entry in entries if entry["message"].endswith(f"in the last {INTERVAL:g} s"))


def test_hundreds_of_bad_requests_from_a_source_log_its_first_and_a_count(proxy: ProxyProcess) -> None:
    started = time.monotonic()
    size_before = len(proxy.log())
    for _ in range(REPEATS):
        assert malformed(proxy, MALFORMED).split(b" ", 2)[1] == b"400"
        assert http_request(proxy.host, proxy.metadata_port, "GET", CREDS, source_ip=STRANGER).status == 404
    held = [socket.create_connection((proxy.host, proxy.metadata_port), source_address=(GREEDY, 0)) for _ in range(4)]
    for _ in range(REPEATS):
        with socket.create_connection((proxy.host, proxy.metadata_port), source_address=(GREEDY, 0)) as extra:
            extra.settimeout(5)
            try:
                assert extra.recv(1) == b""  # closed at once, unanswered
            except ConnectionResetError:
                pass
    for sock in held:
        sock.close()
    assert http_request(proxy.host, proxy.metadata_port, "GET", CREDS, source_ip=POD).status == 200
    elapsed = time.monotonic() - started
    time.sleep(INTERVAL * 2.5)  # the last summaries are written

    for source, first_message in ((MALFORMED, "malformed request"), (STRANGER, "no pod known at this IP"),
                                  (GREEDY, "connection refused: too many open from this source")):
        entries = lines_from(proxy, source)
        assert entries, f"nothing logged for {source}"
        first = entries[0]
        assert first["message"] == first_message, first
        assert "exception" not in first and all("Traceback" not in json.dumps(entry) for entry in entries)
        # The first in full, the rest counted: one summary per interval at most.
        assert summarised(entries) == REPEATS - 1, entries
        assert len(entries) <= 1 + elapsed / INTERVAL + 2, entries
    assert lines_from(proxy, MALFORMED)[0]["reason"] == "BadHttpMessage"
    assert len(proxy.log()) - size_before < 20_000
