"""A real metadata proxy process for tests, and clients for its three ports.

``ProxyProcess`` runs ``python -m metadata_proxy`` bound to one loopback
address (tests give each proxy its own 127.0.0.N, so several proxies share
port numbers as they would on separate nodes), waits for ``/healthz``, and
offers synchronous helpers:

- ``push_snapshot`` / ``push_changes`` / ``status``: the control port, over
  mutual TLS with the operator's test certificate (or any other, to test refusals);
- ``imds_get`` / ``imds_token``: the metadata port, from a chosen source IP
  (the proxy identifies pods by source address; any 127.0.0.0/8 address works
  on loopback);
- ``health`` / ``metrics``.

``role_credentials`` and ``pod_entry`` build wire models with test defaults.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import os
import socket
import ssl
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydantic

from metadata_proxy import wire
from localcluster import certs, ports, processes


@dataclasses.dataclass(frozen=True)
class HttpResult:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def role_credentials(
    key: str = "role-a",
    role_name: str = "role-a",
    *,
    account: str = "123456789012",
    expires_in: float = 3600,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
) -> wire.RoleCredentials:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return wire.RoleCredentials(
        key=key,
        role_arn=f"arn:aws:iam::{account}:role/{role_name}",
        role_name=role_name,
        access_key_id=access_key_id or "ASIA" + uuid.uuid4().hex[:16].upper(),
        secret_access_key=pydantic.SecretStr(secret_access_key or "secret-" + uuid.uuid4().hex),
        session_token=pydantic.SecretStr(session_token or "token-" + uuid.uuid4().hex),
        expiration=now + datetime.timedelta(seconds=expires_in),
        last_updated=now,
    )


def pod_entry(ip: str, role_key: str = "role-a", *, uid: str | None = None, namespace: str = "default", name: str | None = None) -> wire.PodEntry:
    uid = uid or str(uuid.uuid4())
    return wire.PodEntry(ip=ip, uid=uid, namespace=namespace, name=name or f"pod-{uid[:8]}", role_key=role_key)


def client_tls_context(ca: Path, client: certs.CertFiles | None) -> ssl.SSLContext:
    """The operator's side: trust the test CA, present ``client`` (None: no certificate)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if client is not None:
        context.load_cert_chain(*client.pair)
    return context


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    source_ip: str | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str = wire.PROXY_SERVER_NAME,
    timeout: float = 5.0,
) -> HttpResult:
    """One request on a fresh connection, from ``source_ip`` when given."""
    sock = socket.create_connection((host, port), timeout=timeout, source_address=(source_ip, 0) if source_ip else None)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=server_hostname)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    connection.sock = sock
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return HttpResult(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


@dataclasses.dataclass(frozen=True)
class ServerFiles:
    """What a proxy's TLS flags name: its certificate and key, and the CA bundle the operator's client chains to.

    From the test PKI (:meth:`of`), or files written from the operator's
    ``podiam-proxy-tls`` Secret in TLS ``auto`` mode, as the DaemonSet mounts it.
    """

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, pki: certs.Pki) -> ServerFiles:
        return cls(pki.server.cert, pki.server.key, pki.ca)


class ProxyProcess:
    """``python -m metadata_proxy`` on ``host`` with the test PKI (or given files); ``stop()`` is idempotent."""

    def __init__(
        self,
        workdir: Path,
        pki: certs.Pki | ServerFiles,
        host: str = "127.0.0.1",
        *,
        metadata_port: int | None = None,
        control_port: int | None = None,
        health_port: int | None = None,
        container_credentials_port: int | None = None,
        node_name: str = "node-test",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        name: str = "proxy",
    ) -> None:
        self.host = host
        self.pki = pki
        self.files = ServerFiles.of(pki) if isinstance(pki, certs.Pki) else pki
        self.node_name = node_name
        self.metadata_port = metadata_port or ports.free_port(host)
        self.control_port = control_port or ports.free_port(host)
        self.health_port = health_port or ports.free_port(host)
        # A free one, like the others: the default (8186) may be another session's proxy on this address.
        self.container_credentials_port = container_credentials_port or ports.free_port(host)
        argv = [
            sys.executable, "-m", "metadata_proxy",
            "--bind-address", host,
            "--metadata-port", str(self.metadata_port),
            "--control-port", str(self.control_port),
            "--health-port", str(self.health_port),
            "--container-credentials-port", str(self.container_credentials_port),
            "--node-name", node_name,
            "--tls-cert", str(self.files.cert),
            "--tls-key", str(self.files.key),
            "--tls-ca", str(self.files.ca),
            # Never the real IMDS from a test: upstream is a closed loopback port
            # unless the test passes its own --upstream (later flags win).
            "--upstream", f"http://{host}:9",
            *args,
        ]
        # The proxy must need nothing from the environment but its flags.
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PODIAM_", "AWS_"))}
        self.process = processes.ManagedProcess(name, argv, workdir / f"{name}-{host}.log", env={**base_env, **(env or {})})

    # -- lifecycle ---------------------------------------------------------
    def start(self, wait: bool = True) -> ProxyProcess:
        self.process.start()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self.process.wait_http(f"{self.health_url}/healthz", timeout=timeout)

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def log(self) -> str:
        return self.process.log()

    @property
    def metadata_url(self) -> str:
        return f"http://{self.host}:{self.metadata_port}"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.health_port}"

    # -- control port (mutual TLS) ----------------------------------------
    def control(
        self, method: str, path: str, body: bytes | None = None, *, client: certs.CertFiles | None | bool = True
    ) -> HttpResult:
        """A raw control request; ``client=True`` is the test PKI's operator certificate, None is none."""
        chosen: certs.CertFiles | None
        if client is True:
            if not isinstance(self.pki, certs.Pki):
                raise ValueError("this proxy has no test PKI: pass the operator's client certificate files")
            chosen = self.pki.operator
        else:
            chosen = None if client is False else client
        return http_request(
            self.host, self.control_port, method, path,
            body=body, headers={"Content-Type": "application/json"} if body is not None else None,
            tls=client_tls_context(self.files.ca, chosen),
        )

    def push_snapshot(self, snapshot: wire.Snapshot) -> wire.Ack:
        result = self.control("PUT", wire.SNAPSHOT_PATH, wire.encode(snapshot))
        assert result.status == 200, (result.status, result.text)
        return wire.Ack.model_validate_json(result.body)

    def push_changes(self, changes: wire.Changes) -> wire.Ack:
        result = self.control("POST", wire.CHANGES_PATH, wire.encode(changes))
        assert result.status == 200, (result.status, result.text)
        return wire.Ack.model_validate_json(result.body)

    def status(self) -> wire.ProxyStatus:
        result = self.control("GET", wire.STATUS_PATH)
        assert result.status == 200, (result.status, result.text)
        return wire.ProxyStatus.model_validate_json(result.body)

    # -- metadata port -----------------------------------------------------
    def imds_get(self, path: str, source_ip: str | None = None, *, token: str | None = None, headers: Mapping[str, str] | None = None) -> HttpResult:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["X-aws-ec2-metadata-token"] = token
        return http_request(self.host, self.metadata_port, "GET", path, headers=all_headers, source_ip=source_ip or self.host)

    def imds_token(self, source_ip: str | None = None, ttl: int = 21600) -> str:
        result = http_request(
            self.host, self.metadata_port, "PUT", "/latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)}, source_ip=source_ip or self.host,
        )
        assert result.status == 200, (result.status, result.text)
        return result.text

    # -- container-credentials port --------------------------------------------
    @property
    def container_credentials_url(self) -> str:
        return f"http://{self.host}:{self.container_credentials_port}/v1/credentials"

    def container_credentials(self, token: str | None) -> HttpResult:
        """``GET /v1/credentials`` as the SDKs send it: the token as the Authorization header."""
        headers = {"Authorization": token} if token is not None else {}
        return http_request(self.host, self.container_credentials_port, "GET", "/v1/credentials", headers=headers)

    # -- health port -------------------------------------------------------
    def health(self, path: str = "/healthz") -> HttpResult:
        return http_request(self.host, self.health_port, "GET", path)

    def metrics(self) -> str:
        return self.health("/metrics").text
