"""A real proxy's read and idle timeouts, per-source cap and descriptor limit, as set by its flags."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.integration.proxy.conftest import ProxyFactory

pytestmark = pytest.mark.integration

POD, GREEDY = "127.0.75.1", "127.0.75.2"
HEAD = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"


def seconds_until_closed(sock: socket.socket, limit: float = 5.0) -> float:
    """Read until the proxy closes (answers included); how long after the call that took."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_kept_alive_connections_close_when_idle_or_trickling(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--credential-wait", "0", "--idle-timeout", "0.5s", "--read-timeout", "0.5s")
    idle = socket.create_connection((proxy.host, proxy.metadata_port), source_address=(POD, 0))
    idle.sendall(HEAD)
    assert idle.recv(65536).startswith(b"HTTP/1.1 404")  # answered, kept alive
    assert 0.3 < seconds_until_closed(idle) < 2.0  # then closed for idling
    trickling = socket.create_connection((proxy.host, proxy.metadata_port), source_address=(POD, 0))
    trickling.sendall(HEAD)
    assert trickling.recv(65536).startswith(b"HTTP/1.1 404")
    started = time.monotonic()
    try:
        for byte in HEAD[:30]:  # the next request, a byte every 0.1 s: its timer does not move for that
            trickling.sendall(bytes([byte]))
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert time.monotonic() - started + seconds_until_closed(trickling) < 2.0
    silent = socket.create_connection((proxy.host, proxy.metadata_port), source_address=(POD, 0))
    assert 0.3 < seconds_until_closed(silent) < 2.0


def test_one_source_holds_its_cap_while_others_are_served(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--credential-wait", "0", "--max-connections-per-source", "3")
    held = [socket.create_connection((proxy.host, proxy.metadata_port), source_address=(GREEDY, 0)) for _ in range(3)]
    refused = socket.create_connection((proxy.host, proxy.metadata_port), source_address=(GREEDY, 0))
    assert seconds_until_closed(refused) < 0.5
    assert proxy.imds_get("/latest/meta-data/iam/security-credentials/", POD).status == 404  # served (no pod there)
    for sock in held:
        sock.close()


def test_the_proxy_sets_its_descriptor_limit_and_says_how_it_shares_it(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy()
    limits = Path(f"/proc/{proxy.process.pid}/limits").read_text()
    soft = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max open files"))
    assert soft == "8192"
    listening = next(json.loads(line) for line in proxy.log().splitlines() if '"listening"' in line)
    assert listening["open_files"] == 8192
    assert listening["connections"] == {"metadata": "128 per source, 5940 in all", "credentials": "128 per source, 1980 in all",
                                        "control": "8 per source, 128 in all", "health": "8 per source, 64 in all"}
