"""The operator's TLS never raises for TLS or API trouble: it reports it."""

from __future__ import annotations

import logging
from pathlib import Path

import pydantic
import pytest
from kubernetes_asyncio import client

from podiam_operator import _settings
from podiam_operator._kits import kube as kubes
from podiam_operator.tls import runtime

pytestmark = pytest.mark.unit


def _settings_for(tmp_path: Path, mode: str = "auto", namespace: str | None = "ns") -> _settings.OperatorSettings:
    return _settings.OperatorSettings(tls_mode=mode, tls_client_cert_file=tmp_path / "tls.crt", tls_client_key_file=tmp_path / "tls.key",
                                      tls_ca_file=tmp_path / "ca.crt", tls_namespace=namespace)


def _unreachable() -> kubes.Kube:
    return kubes.Kube(client.ApiClient(client.Configuration(host="http://127.0.0.1:9")))  # nothing listens on the discard port


async def test_unreachable_api_is_a_status_not_an_exception(tmp_path: Path) -> None:
    async with _unreachable() as kube:
        tls = runtime.Tls(_settings_for(tmp_path), kube, logging.getLogger("test"))
        due = await tls.check_once()
        assert not tls.status().ok
        assert tls.status().message.startswith("TLS set-up could not reach the Kubernetes API or complete: ClientConnectorError")
        assert (due - tls.clock()).total_seconds() <= 1.5  # retried soon, backing off
        await tls.check_once()
        assert (await tls.check_once() - tls.clock()).total_seconds() > 2
    assert not (tmp_path / "tls.crt").exists()


async def test_unknown_namespace_is_a_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_settings, "_SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    async with _unreachable() as kube:
        tls = runtime.Tls(_settings_for(tmp_path, namespace=None), kube, logging.getLogger("test"))
        await tls.check_once()
    assert not tls.status().ok and "set PODIAM_TLS_NAMESPACE" in tls.status().message


def test_unknown_mode_is_refused_with_the_settings(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="tls_mode"):
        _settings_for(tmp_path, "manual")


async def test_secrets_mode_with_nothing_mounted(tmp_path: Path) -> None:
    async with _unreachable() as kube:
        tls = runtime.Tls(_settings_for(tmp_path / "mnt", "secrets"), kube, logging.getLogger("test"))
        await tls.check_once()
    assert not tls.status().ok
    assert "does not exist (that directory does not exist either: is the Secret mounted?)" in tls.status().message
