from __future__ import annotations

import pydantic
import pytest

from podiam_operator import _settings

pytestmark = pytest.mark.unit


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings.from_argv([])
    assert settings.session_duration == 3600
    assert settings.refresh_point == 0.5
    assert settings.effective_min_remaining == 1200  # 20 minutes for 1-hour sessions
    assert settings.tls_mode == "auto"
    assert settings.proxy_labels() == {"app.kubernetes.io/name": "podiam-proxy"}


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIAM_SESSION_DURATION", "7200")
    monkeypatch.setenv("PODIAM_ASSUME_ROLE_ARN", "arn:aws:iam::123456789012:role/server")
    monkeypatch.setenv("PODIAM_PER_POD_SESSIONS", "true")
    settings = _settings.from_argv(["--session-duration", "1800", "--tls-mode", "secrets", "--no-manage-node-taint"])
    assert settings.session_duration == 1800  # flags win
    assert settings.assume_role_arn == "arn:aws:iam::123456789012:role/server"
    assert settings.per_pod_sessions is True
    assert settings.tls_mode == "secrets"
    assert settings.manage_node_taint is False


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("PODIAM_SESSION_DURATION", "600"),
        ("PODIAM_SESSION_DURATION", "50000"),
        ("PODIAM_REFRESH_POINT", "1.5"),
        ("PODIAM_ASSUME_ROLE_ARN", "not-an-arn"),
        ("PODIAM_BASE_ROLE_ARN", "arn:aws:iam::1:role/"),
        ("PODIAM_PROXY_SELECTOR", "justakey"),
        ("PODIAM_TLS_MODE", "files"),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(pydantic.ValidationError):
        _settings.OperatorSettings()
