"""The entry points never raise for TLS or API trouble: they report it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from podiam_operator.tls import _settings, runtime

pytestmark = pytest.mark.unit


@dataclasses.dataclass
class _OperatorSettings:
    tls_mode: str
    tls_client_cert_file: Path
    tls_client_key_file: Path
    tls_ca_file: Path


def _operator(tmp_path: Path, mode: str = "auto") -> _OperatorSettings:
    return _OperatorSettings(mode, tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt")


async def test_unreachable_api_is_a_status_not_an_exception(tmp_path: Path) -> None:
    configuration = client.Configuration(host="http://127.0.0.1:9")  # nothing listens on the discard port
    api = client.ApiClient(configuration)
    tls = runtime.Tls(_operator(tmp_path), logging.getLogger("test"), tls_settings=_settings.TlsSettings(namespace="ns"), api=api)
    try:
        due = await tls.check_once()
        assert not tls.status().ok
        assert tls.status().message.startswith("TLS set-up could not reach the Kubernetes API or complete: ClientConnectorError")
        assert (due - tls.clock()).total_seconds() <= 1.5  # retried soon, backing off
        await tls.check_once()
        assert (await tls.check_once() - tls.clock()).total_seconds() > 2
    finally:
        await tls.close()
    assert not (tmp_path / "tls.crt").exists()


async def test_unknown_namespace_is_a_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_settings, "_SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    tls = runtime.Tls(_operator(tmp_path), logging.getLogger("test"), tls_settings=_settings.TlsSettings(namespace=None))
    await tls.check_once()
    assert not tls.status().ok and "set PODIAM_TLS_NAMESPACE" in tls.status().message


def test_unknown_mode_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_mode must be 'auto' or 'secrets'"):
        runtime.Tls(_operator(tmp_path, "manual"))


async def test_secrets_mode_with_nothing_mounted(tmp_path: Path) -> None:
    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    tls = runtime.Tls(_operator(tmp_path / "mnt", "secrets"), logging.getLogger("test"),
                      tls_settings=_settings.TlsSettings(namespace="ns"), api=api)
    try:
        await tls.check_once()
    finally:
        await tls.close()
    assert not tls.status().ok
    assert "does not exist (that directory does not exist either: is the Secret mounted?)" in tls.status().message
