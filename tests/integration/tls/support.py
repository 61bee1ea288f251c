"""Real processes and clients for the TLS integration tests.

- :class:`TlsAgent`: ``python -m podiam_operator.tls run|check``, the
  operator's TLS code in a process of its own, against the real API server.
- :class:`Pusher`: pushes snapshots to a real proxy over mutual TLS, one new
  connection (so one full handshake) per push, with the operator's client
  files; like the operator's push client it rebuilds its SSL context when the
  files change and keeps the last good one if a reload fails. It records every
  failed push and the certificate each proxy presented.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509

from metadata_proxy import wire
from localcluster import processes
from localcluster import proxy as proxy_support


@dataclasses.dataclass(frozen=True)
class ClientFiles:
    cert: Path
    key: Path
    ca: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in (os.stat(p) for p in (self.cert, self.key, self.ca)))


def agent_env(kubeconfig: Path, namespace: str, files: ClientFiles, mode: str = "auto", **settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PODIAM_", "AWS_", "POD_NAME"))}
    env = {
        **base,
        "KUBECONFIG": str(kubeconfig),
        "PODIAM_TLS_MODE": mode,
        "PODIAM_TLS_CLIENT_CERT_FILE": str(files.cert),
        "PODIAM_TLS_CLIENT_KEY_FILE": str(files.key),
        "PODIAM_TLS_CA_FILE": str(files.ca),
        "PODIAM_TLS_NAMESPACE": namespace,
    }
    env.update({f"PODIAM_TLS_{key.upper()}": value for key, value in settings.items()})
    return env


class TlsAgent:
    def __init__(self, workdir: Path, env: Mapping[str, str], name: str = "tls-agent") -> None:
        self.process = processes.ManagedProcess(
            name, [sys.executable, "-m", "podiam_operator.tls", "run"], workdir / f"{name}.log", env=env,
        )

    def start(self) -> TlsAgent:
        self.process.start()
        return self

    def wait_ok(self, timeout: float = 60.0) -> None:
        self.process.wait_until(lambda: "ok: TLS mode" in self.process.log(), timeout, what="TLS ready")

    def stop(self) -> None:
        self.process.stop()

    def log(self) -> str:
        return self.process.log()


def check(env: Mapping[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m podiam_operator.tls check``: exit status and the status line."""
    return subprocess.run([sys.executable, "-m", "podiam_operator.tls", "check"], env=dict(env),
                          capture_output=True, text=True, timeout=timeout)


@dataclasses.dataclass
class PushResult:
    ok: bool
    detail: str
    server_cert: x509.Certificate | None = None


def push_once(host: str, port: int, context: ssl.SSLContext, generation: int,
              server_name: str = wire.PROXY_SERVER_NAME, timeout: float = 5.0) -> PushResult:
    """One snapshot push on a fresh connection."""
    body = wire.encode(wire.Snapshot(generation=generation))
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        tls = context.wrap_socket(sock, server_hostname=server_name)
        peer = tls.getpeercert(binary_form=True)
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        connection.sock = tls
        try:
            connection.request("PUT", wire.SNAPSHOT_PATH, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            connection.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as error:
        return PushResult(False, f"{type(error).__name__}: {error}")
    cert = x509.load_der_x509_certificate(peer) if peer else None
    return PushResult(response.status == 200, f"HTTP {response.status} {text[:200]}", cert)


def served_certificate(host: str, port: int, context: ssl.SSLContext, server_name: str = wire.PROXY_SERVER_NAME) -> x509.Certificate:
    """The certificate a proxy presents now (a handshake, no request)."""
    with socket.create_connection((host, port), timeout=5) as sock, context.wrap_socket(sock, server_hostname=server_name) as tls:
        peer = tls.getpeercert(binary_form=True)
    assert peer is not None
    return x509.load_der_x509_certificate(peer)


class Pusher:
    """Pushes to ``proxies`` every ``interval`` seconds from a thread, until stopped."""

    def __init__(self, files: ClientFiles, proxies: list[proxy_support.ProxyProcess], interval: float = 0.02,
                 server_name: str = wire.PROXY_SERVER_NAME) -> None:
        self.files = files
        self.proxies = proxies
        self.interval = interval
        self.server_name = server_name
        self.pushes = 0
        self.failures: list[str] = []
        self.reloads = 0
        self.reload_failures: list[str] = []
        self.last_server_cert: dict[str, x509.Certificate] = {}
        self._signature, self._context = self._first_load()
        self._generation = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pusher", daemon=True)

    def _first_load(self) -> tuple[tuple[tuple[int, int, int], ...], ssl.SSLContext]:
        # The files are replaced one at a time: a load between the new key
        # and the new certificate fails, and is simply tried again.
        for _ in range(50):
            try:
                return self.files.signature(), self.files.context()
            except ssl.SSLError:
                time.sleep(0.05)
        return self.files.signature(), self.files.context()

    def _maybe_reload(self) -> None:
        try:
            signature = self.files.signature()
            if signature == self._signature:
                return
            self._context = self.files.context()
            self._signature = signature
            self.reloads += 1
        except (OSError, ssl.SSLError, ValueError) as error:
            self.reload_failures.append(str(error))  # keep the last good context; retry next round

    def client_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.files.cert.read_bytes())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._maybe_reload()
            for target in self.proxies:
                result = push_once(target.host, target.control_port, self._context, next(self._generation), self.server_name)
                self.pushes += 1
                if result.ok:
                    assert result.server_cert is not None
                    self.last_server_cert[target.host] = result.server_cert
                else:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {target.host}: {result.detail}")
            self._stop.wait(self.interval)

    def start(self) -> Pusher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
