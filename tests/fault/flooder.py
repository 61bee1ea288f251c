"""A hostile pod holding as many connections to one port as it can, as a separate process.

``python -m tests.fault.flooder --host H --port P --source S [--source S2 ...] --hold N --seconds T``
keeps up to ``N`` connections open from the source addresses (in turn) for
``T`` seconds, re-opening those the server closes (at most ``--rate`` new
connections a second): half send nothing, half
a request head cut short (or, with ``--tls``, a TLS record header and no
record). It prints what happened as one JSON object: connections attempted,
established, closed by the server, failed to connect, and the most held at
once. Loopback only; bounded by ``--seconds`` and ``--max-attempts``.

A process of its own, so the flood's work never shares the measuring
process's interpreter lock.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import sys
import time

_IP_BIND_ADDRESS_NO_PORT = 24  # pick the port at connect(): a source holds more than 28k ports then
_PARTIAL_HTTP = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Slow: "
_PARTIAL_TLS = b"\x16\x03\x01\x02\x00"  # a handshake record header announcing 512 bytes that never come
_CONNECT_DEADLINE = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--hold", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=2000.0, help="new connections per second at most")
    parser.add_argument("--max-attempts", type=int, default=50_000)
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    if not all(address.startswith("127.") for address in [args.host, *args.source]):
        sys.exit("flooder: loopback addresses only")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    partial = _PARTIAL_TLS if args.tls else _PARTIAL_HTTP

    selector = selectors.DefaultSelector()
    connecting: dict[socket.socket, float] = {}
    held: set[socket.socket] = set()
    stats = {"attempts": 0, "established": 0, "closed_by_server": 0, "connect_failed": 0, "connect_timeouts": 0, "max_held": 0}
    end = time.monotonic() + args.seconds

    def drop(sock: socket.socket) -> None:
        selector.unregister(sock)
        connecting.pop(sock, None)
        held.discard(sock)
        sock.close()

    started = time.monotonic()
    while (now := time.monotonic()) < end:
        allowed = min(args.max_attempts, int((now - started) * args.rate) + 1)
        while len(held) + len(connecting) < args.hold and stats["attempts"] < allowed:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.setblocking(False)
            sock.bind((args.source[stats["attempts"] % len(args.source)], 0))
            stats["attempts"] += 1
            code = sock.connect_ex((args.host, args.port))
            if code not in (0, errno.EINPROGRESS):
                stats["connect_failed"] += 1
                sock.close()
                continue
            connecting[sock] = now
            selector.register(sock, selectors.EVENT_WRITE)
        for key, _ in selector.select(timeout=0.02):
            sock = key.fileobj  # type: ignore[assignment]
            if sock in connecting:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    stats["connect_failed"] += 1
                    drop(sock)
                    continue
                del connecting[sock]
                held.add(sock)
                stats["established"] += 1
                if stats["established"] % 2 == 0:
                    try:
                        sock.send(partial)
                    except OSError:
                        pass
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:  # closed or reset by the server
                stats["closed_by_server"] += 1
                drop(sock)
        for sock, since in list(connecting.items()):
            if now - since > _CONNECT_DEADLINE:
                stats["connect_timeouts"] += 1
                drop(sock)
        stats["max_held"] = max(stats["max_held"], len(held))
    for sock in list(held) + list(connecting):
        drop(sock)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
