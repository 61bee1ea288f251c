"""Settings: every field a flag and a PODIAM_PROXY_* variable, flags first; clear errors."""

from __future__ import annotations

import ipaddress

import pytest

from metadata_proxy import _settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(_settings.ENV_PREFIX):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    settings, args = _settings.parse([])
    assert (settings.metadata_port, settings.control_port, settings.health_port) == (8181, 8182, 8183)
    assert settings.credential_wait == 0.8 and settings.expiry_margin == 300
    assert settings.host_interface == "cali+" and not settings.iptables and not args.remove_iptables_rules
    assert settings.operator_identity == "podiam-operator"
    assert str(settings.upstream) == "http://169.254.169.254/"
    assert settings.allow_route == _settings.DEFAULT_ALLOWED_ROUTES
    # One caller cannot starve the others.
    assert (settings.open_files, settings.max_connections_per_source, settings.max_connections) == (8192, 128, 0)
    assert (settings.read_timeout, settings.idle_timeout, settings.log_summary_interval) == (5.0, 5.0, 10.0)
    assert (settings.upstream_cache_ttl, settings.upstream_rate, settings.upstream_burst) == (2.0, 10.0, 20)
    assert settings.health_bind_address is None


def test_limits_from_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIAM_PROXY_OPEN_FILES", "65536")
    monkeypatch.setenv("PODIAM_PROXY_READ_TIMEOUT", "2s")
    settings, _ = _settings.parse(["--max-connections-per-source", "16", "--idle-timeout", "500ms", "--upstream-cache-ttl", "0",
                                   "--health-bind-address", "127.0.0.1", "--log-summary-interval", "1m"])
    assert (settings.open_files, settings.read_timeout, settings.idle_timeout) == (65536, 2.0, 0.5)
    assert (settings.max_connections_per_source, settings.upstream_cache_ttl, settings.log_summary_interval) == (16, 0.0, 60.0)
    assert settings.health_bind_address == "127.0.0.1"


def test_every_field_has_a_flag_and_an_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    help_text = _settings.build_parser().format_help()
    for name in _settings.ProxySettings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
        assert "PODIAM_PROXY_" + name.upper() in help_text.replace("\n", "").replace(" ", "")


def test_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIAM_PROXY_CREDENTIAL_WAIT", "1s")
    monkeypatch.setenv("PODIAM_PROXY_NODE_NAME", "from-env")
    monkeypatch.setenv("PODIAM_PROXY_REQUIRE_IMDSV2", "true")
    monkeypatch.setenv("PODIAM_PROXY_ALLOW_ROUTE", '["/latest/meta-data/instance-type"]')
    settings, _ = _settings.parse(["--node-name", "from-flag"])
    assert settings.credential_wait == 1.0 and settings.node_name == "from-flag" and settings.require_imdsv2
    assert settings.allow_route == ["/latest/meta-data/instance-type"]
    settings, _ = _settings.parse(["--no-require-imdsv2", "--allow-route", "a", "--allow-route", "b"])
    assert not settings.require_imdsv2 and settings.allow_route == ["a", "b"]


@pytest.mark.parametrize("text,seconds", [("800ms", 0.8), ("1s", 1.0), ("2", 2.0), ("0.5", 0.5), ("5m", 300.0), ("800 ms", 0.8),
                                          ("1m30s", 90.0)])
def test_durations_as_kiam_writes_them(text: str, seconds: float) -> None:
    assert _settings.parse(["--credential-wait", text])[0].credential_wait == pytest.approx(seconds)


def test_log_format_plain_as_the_operator_says_it_and_text_as_before() -> None:
    assert _settings.parse(["--log-format", "plain"])[0].log_format == "plain"
    assert _settings.parse(["--log-format", "text"])[0].log_format == "plain"


def test_iptables_settings() -> None:
    settings, _ = _settings.parse(["--iptables", "--host-ip", "10.0.0.5", "--host-interface", "!eth0"])
    assert settings.iptables and settings.host_ip == ipaddress.IPv4Address("10.0.0.5") and settings.host_interface == "!eth0"


@pytest.mark.parametrize("argv,message", [
    (["--iptables"], "--iptables needs --host-ip"),
    (["--credential-wait", "soon"], "--credential-wait"),
    (["--allow-route", "(unclosed"], "--allow-route"),
    (["--host-interface", "eth0; rm -rf /"], "--host-interface"),
    (["--metadata-port", "70000"], "--metadata-port"),
    (["--control-port", "8181"], "must differ"),
    (["--bind-address", "not-an-ip"], "--bind-address"),
    (["--require-imdsv2", "--disable-imdsv2"], "exclude each other"),
    (["--log-level", "chatty"], "--log-level"),
    (["--read-timeout", "0"], "--read-timeout must be more than 0"),
    (["--idle-timeout", "0s"], "--idle-timeout must be more than 0"),
    (["--log-summary-interval", "0"], "--log-summary-interval must be more than 0"),
    (["--max-connections-per-source", "0"], "--max-connections-per-source"),
    (["--open-files", "100"], "--open-files"),
    (["--upstream-rate", "0"], "--upstream-rate"),
    (["--health-bind-address", "localhost"], "--health-bind-address"),
])
def test_bad_settings_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _settings.parse(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_help_speaks_kiam() -> None:
    help_text = _settings.build_parser().format_help()
    for words in ("gatewayTimeoutCreation", "--host-interface", "--iptables", "--whitelist-route-regexp", "--remove-iptables-rules", "cali+"):
        assert words in help_text


def test_tls_files_are_required_to_serve() -> None:
    with pytest.raises(ValueError, match="--tls-cert, --tls-key, --tls-ca required"):
        _settings.parse([])[0].require_tls()
