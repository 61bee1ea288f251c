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


def test_ports_sit_next_to_the_proxys(monkeypatch: pytest.MonkeyPatch) -> None:
    # On the host network the operator shares the node's ports with the proxy's 8181-8183.
    settings = _settings.from_argv([])
    assert (settings.liveness_port, settings.metrics_port) == (8184, 8185)


def test_the_operators_node_identity_needs_its_namespace_and_service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings.from_argv([]).operator_node_identity is False
    monkeypatch.setenv("PODIAM_OPERATOR_NODE_IDENTITY", "true")
    with pytest.raises(pydantic.ValidationError, match="--operator-node-identity needs --operator-namespace and --operator-service-account"):
        _settings.OperatorSettings()
    monkeypatch.setenv("PODIAM_OPERATOR_NAMESPACE", "podiam-system")
    settings = _settings.from_argv(["--operator-service-account", "podiam-operator"])
    assert (settings.operator_node_identity, settings.operator_namespace, settings.operator_service_account) == (
        True, "podiam-system", "podiam-operator")


def test_role_sources_and_policy_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = _settings.from_argv([])
    assert (defaults.iam_role_key, defaults.iam_external_id, defaults.namespace_key) == (
        "iam.amazonaws.com/role", "iam.amazonaws.com/external-id", "iam.amazonaws.com/allowed-roles")
    assert (defaults.namespace_restriction_format, defaults.disable_strict_namespace_regexp) == ("glob", False)
    assert (defaults.default_role, defaults.irsa_service_accounts, defaults.cluster_name) == (None, False, None)
    monkeypatch.setenv("PODIAM_DEFAULT_ROLE", "kube2iam-default")
    settings = _settings.from_argv([
        "--iam-role-key", "example.com/role", "--namespace-restriction-format", "regexp",
        "--disable-strict-namespace-regexp", "--irsa-service-accounts", "--cluster-name", "prod eu-1",
    ])
    assert settings.iam_role_key == "example.com/role" and settings.namespace_restriction_format == "regexp"
    assert settings.disable_strict_namespace_regexp and settings.irsa_service_accounts
    assert (settings.default_role, settings.cluster_name) == ("kube2iam-default", "prod eu-1")


@pytest.mark.parametrize(("env", "value"), [
    ("PODIAM_DEFAULT_ROLE", "team/../admin"),
    ("PODIAM_DEFAULT_ROLE", "arn:aws:iam::1:role/x"),
    ("PODIAM_CLUSTER_NAME", "a" * 257),
    ("PODIAM_CLUSTER_NAME", "bad\\name"),
    ("PODIAM_IAM_ROLE_KEY", "not a key"),
    ("PODIAM_NAMESPACE_KEY", "/roles"),
    ("PODIAM_NAMESPACE_RESTRICTION_FORMAT", "regex"),
    ("PODIAM_STS_REGION", "Mars"),
])
def test_bad_source_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(pydantic.ValidationError):
        _settings.OperatorSettings()


def test_log_format_plain_and_the_proxys_former_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODIAM_LOG_FORMAT", raising=False)
    assert _settings.from_argv(["--log-format", "plain"]).log_format == "plain"
    assert _settings.from_argv(["--log-format", "text"]).log_format == "plain"
