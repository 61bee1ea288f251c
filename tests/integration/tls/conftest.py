"""Integration tests of the operator-side TLS: the real API server (localcluster/controlplane), the operator's
TLS code in real processes, real proxies mounting the Secrets through a kubelet-style volume."""

from __future__ import annotations

import itertools
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import controlplane as _cp
from tests.integration.tls import cfssl, secret_volume, support
from localcluster import certs
from localcluster import proxy as proxy_support

_hosts = itertools.count(20)


@pytest.fixture
def namespace(controlplane: _cp.ControlPlane) -> Iterator[str]:
    name = f"podiam-tls-{uuid.uuid4().hex[:8]}"
    controlplane.create_namespace(name)
    yield name
    controlplane.api("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def volumes(controlplane: _cp.ControlPlane, namespace: str, workdir: Path) -> Iterator[Callable[..., secret_volume.SecretVolume]]:
    """``volumes(secret_name, period=0.3)``: a kubelet-style mounted Secret, synced until the test ends."""
    started: list[secret_volume.SecretVolume] = []

    def mount(name: str, period: float = 0.3) -> secret_volume.SecretVolume:
        volume = secret_volume.SecretVolume(controlplane.api, namespace, name, workdir / "volumes" / name, period)
        _cp.wait_until(volume.sync, 60, f"Secret {namespace}/{name} to exist")
        started.append(volume.start())
        return volume

    yield mount
    for volume in started:
        volume.stop()


@pytest.fixture
def proxies(workdir: Path) -> Iterator[Callable[..., proxy_support.ProxyProcess]]:
    """``proxies(cert, key, ca, *extra_args)``: a real proxy on its own 127.0.0.N with these TLS files."""
    started: list[proxy_support.ProxyProcess] = []
    placeholder = certs.make_pki(workdir / "placeholder-pki")  # ProxyProcess wants one; the flags below win

    def start(cert: Path, key: Path, ca: Path, *args: str) -> proxy_support.ProxyProcess:
        host = f"127.0.0.{next(_hosts)}"
        process = proxy_support.ProxyProcess(
            workdir, placeholder, host, node_name=f"node-{host}",
            args=["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca), "--tls-reload-interval", "0.2", *args],
            name=f"proxy-{host}",
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def agents(workdir: Path) -> Iterator[Callable[..., support.TlsAgent]]:
    started: list[support.TlsAgent] = []

    def start(env: dict[str, str], name: str = "tls-agent") -> support.TlsAgent:
        agent = support.TlsAgent(workdir, env, name)
        started.append(agent.start())
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture(scope="session")
def cfssl_bin() -> Path:
    return cfssl.ensure_built()


def events(controlplane: _cp.ControlPlane, namespace: str, reason: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = controlplane.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    return [item for item in items if reason is None or item["reason"] == reason]


def secret(controlplane: _cp.ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = controlplane.api("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    return result
