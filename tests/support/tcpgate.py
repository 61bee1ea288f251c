"""A TCP forwarder that a test can cut and heal: a network partition between one client and a server.

``TcpGate(("127.0.0.1", port))`` listens on a free loopback port and relays
every connection to the target, bytes as they are (TLS passes through, so
the client still verifies the server's certificate). ``cut()`` resets every
open connection and refuses new ones until ``heal()``. Used to keep the
operator from the API server while the test changes the cluster, so that its
watches come back with resource versions the API server no longer knows.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading

from localcluster import ports


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        # SO_LINGER 0: close() sends RST, as a broken network path shows up to a client.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpGate:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = ports.free_port(host)
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._listener = socket.create_server((host, self.port), backlog=128)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcpgate-accept")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TcpGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def __enter__(self) -> TcpGate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> None:
        """Reset every relayed connection; refuse new ones until :meth:`heal`."""
        self._open.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def heal(self) -> None:
        self._open.set()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._relay, args=(pair,), daemon=True, name="tcpgate-relay").start()

    def _relay(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        selector = selectors.DefaultSelector()
        try:
            for sock in pair:
                sock.setblocking(True)
                sock.settimeout(None)
                selector.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select(timeout=1.0):
                    source = key.fileobj
                    sink = upstream if source is client else client
                    data = source.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    sink.sendall(data)
                if self._stopped.is_set():
                    return
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            with self._lock:
                self._pairs.discard(pair)
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
