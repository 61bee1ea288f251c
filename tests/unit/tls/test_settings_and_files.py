"""Settings from the environment; the client files on disk; the reporter's de-duplication."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pydantic
import pytest

from podiam_operator import _settings
from podiam_operator.tls import checks, files, report

pytestmark = pytest.mark.unit


def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PODIAM_") or name == "POD_NAME":
            monkeypatch.delenv(name)


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    settings = _settings.OperatorSettings()
    assert settings.tls_key_type is _settings.KeyType.ECDSA_P256
    assert settings.tls_ca_lifetime == datetime.timedelta(days=3650)
    assert settings.tls_leaf_lifetime == datetime.timedelta(days=90)
    assert (settings.tls_ca_secret, settings.tls_proxy_secret, settings.tls_operator_secret) == ("podiam-ca", "podiam-proxy-tls", "podiam-operator-tls")
    assert (settings.tls_operator_identity, settings.proxy_server_name) == ("podiam-operator", "podiam-proxy")


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("PODIAM_TLS_KEY_TYPE", "rsa-2048")
    monkeypatch.setenv("PODIAM_TLS_LEAF_LIFETIME", "P30D")
    monkeypatch.setenv("PODIAM_TLS_CA_OVERLAP", "120")
    monkeypatch.setenv("PODIAM_TLS_OPERATOR_IDENTITY", "kiam-server")
    monkeypatch.setenv("POD_NAME", "podiam-operator-abc")
    settings = _settings.OperatorSettings()
    assert settings.tls_key_type is _settings.KeyType.RSA_2048
    assert settings.tls_leaf_lifetime == datetime.timedelta(days=30)
    assert settings.tls_ca_overlap == datetime.timedelta(minutes=2)
    assert settings.tls_operator_identity == "kiam-server" and settings.tls_pod_name == "podiam-operator-abc"


def test_every_tls_setting_is_a_flag_too(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    settings = _settings.from_argv(["--tls-key-type", "rsa-2048", "--tls-leaf-lifetime", "1h30m", "--tls-ca-secret", "ca",
                                    "--no-tls-check-proxy-secret", "--tls-webhook-hosts", "a,b", "--tls-pod-name", "p"])
    assert settings.tls_key_type is _settings.KeyType.RSA_2048 and settings.tls_leaf_lifetime == datetime.timedelta(minutes=90)
    assert (settings.tls_ca_secret, settings.tls_check_proxy_secret, settings.tls_webhook_host_list(), settings.tls_pod_name) == (
        "ca", False, ("a", "b"), "p")


def test_the_proxy_server_name_is_one_setting(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """PODIAM_TLS_PROXY_SERVER_NAME, its former second name, is still read; the two may not disagree."""
    _clean(monkeypatch)
    monkeypatch.setenv("PODIAM_TLS_PROXY_SERVER_NAME", "kiam-agent")
    assert _settings.from_argv([]).proxy_server_name == "kiam-agent"
    assert "PODIAM_TLS_PROXY_SERVER_NAME is deprecated: set PODIAM_PROXY_SERVER_NAME instead" in caplog.text
    assert _settings.from_argv(["--proxy-server-name", "kiam-agent"]).proxy_server_name == "kiam-agent"
    monkeypatch.setenv("PODIAM_PROXY_SERVER_NAME", "podiam-proxy")
    with pytest.raises(pydantic.ValidationError, match="PODIAM_TLS_PROXY_SERVER_NAME .deprecated. is 'kiam-agent' but --proxy-server-name"):
        _settings.from_argv([])


@pytest.mark.parametrize(("field", "value"), [("tls_key_type", "dsa"), ("tls_renew_at", 1.5), ("tls_leaf_lifetime", "-5"),
                                              ("tls_leaf_lifetime", "P4000D"), ("proxy_server_name", "")])
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(pydantic.ValidationError):
        _settings.OperatorSettings.model_validate({field: value})


def test_namespace_must_be_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_settings, "_SERVICE_ACCOUNT_NAMESPACE", tmp_path / "none")
    with pytest.raises(ValueError, match="set PODIAM_TLS_NAMESPACE"):
        _settings.OperatorSettings(tls_namespace=None).tls_resolved_namespace()
    (tmp_path / "ns").write_text("podiam-system\n")
    monkeypatch.setattr(_settings, "_SERVICE_ACCOUNT_NAMESPACE", tmp_path / "ns")
    assert _settings.OperatorSettings(tls_namespace=None).tls_resolved_namespace() == "podiam-system"


def test_client_files_are_written_atomically_and_only_on_change(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "tls" / "tls.crt", tmp_path / "tls" / "tls.key", tmp_path / "tls" / "ca.crt"
    assert files.write_client_material(cert, key, ca, cert=b"C", key=b"K", ca=b"A")
    assert (cert.read_bytes(), key.read_bytes(), ca.read_bytes()) == (b"C", b"K", b"A")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    inode = cert.stat().st_ino
    assert not files.write_client_material(cert, key, ca, cert=b"C", key=b"K", ca=b"A")
    assert cert.stat().st_ino == inode
    assert files.write_client_material(cert, key, ca, cert=b"C2", key=b"K2", ca=b"A")
    assert cert.stat().st_ino != inode and cert.read_bytes() == b"C2"
    assert sorted(p.name for p in cert.parent.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]  # no temporaries left


def test_unwritable_client_files(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(checks.TlsProblem, match="cannot write the operator's TLS files"):
        files.write_client_material(blocker / "a", blocker / "b", blocker / "c", cert=b"", key=b"", ca=b"")


def test_missing_mounted_file_lists_what_is_there(tmp_path: Path) -> None:
    for name in ("ca.pem", "server.pem", "server-key.pem"):
        (tmp_path / name).write_text("x")
    with pytest.raises(checks.TlsProblem) as caught:
        files.read_file(tmp_path / "tls.crt", "operator's certificate")
    assert caught.value.reason == checks.MISSING
    assert f"the operator's certificate file {tmp_path / 'tls.crt'} does not exist (that directory holds: ca.pem, server-key.pem, server.pem)" in caught.value.message
    with pytest.raises(checks.TlsProblem, match="that directory does not exist either: is the Secret mounted"):
        files.read_file(tmp_path / "nowhere" / "tls.crt", "operator's certificate")


class _Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    async def post(self, type_: str, reason: str, message: str) -> bool:
        self.posted.append((type_, reason, message))
        return True


async def test_reporter_posts_each_problem_once_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    events = _Events()
    reporter = report.Reporter(logging.getLogger("test.tls"), events)  # type: ignore[arg-type]
    assert not reporter.status.ok
    problem = checks.TlsProblem(checks.EXPIRED, "certificate X expired")
    for _ in range(3):
        await reporter.problem(problem)
    assert reporter.status == report.Status(ok=False, message="certificate X expired")
    assert events.posted == [("Warning", checks.EXPIRED, "certificate X expired")]
    assert [r.getMessage() for r in caplog.records].count("TLS: certificate X expired") == 1
    await reporter.ready("TLS mode auto: fine")
    assert reporter.status.ok and events.posted[-1] == ("Normal", "TLSReady", "TLS mode auto: fine")
    await reporter.problem(problem)  # the same problem again later is news again
    assert events.posted.count(("Warning", checks.EXPIRED, "certificate X expired")) == 2


@pytest.mark.parametrize(("text", "expected"), [
    ("90", datetime.timedelta(seconds=90)), ("2160h", datetime.timedelta(days=90)), ("90d", datetime.timedelta(days=90)),
    ("1h30m", datetime.timedelta(minutes=90)), ("0.5s", datetime.timedelta(seconds=0.5)), ("P90D", datetime.timedelta(days=90)),
])
def test_duration_formats(text: str, expected: datetime.timedelta) -> None:
    assert _settings.OperatorSettings.model_validate({"tls_leaf_lifetime": text}).tls_leaf_lifetime == expected


async def test_a_problem_whose_age_grows_is_still_one_problem() -> None:
    import logging
    events = _Events()
    reporter = report.Reporter(logging.getLogger("test.tls"), events)  # type: ignore[arg-type]
    await reporter.problem(checks.TlsProblem(checks.EXPIRED, "certificate X expired at T (3 minutes ago); renew it"))
    await reporter.problem(checks.TlsProblem(checks.EXPIRED, "certificate X expired at T (4 minutes ago); renew it"))
    assert len(events.posted) == 1
    assert reporter.status.message == "certificate X expired at T (4 minutes ago); renew it"
    await reporter.problem(checks.TlsProblem(checks.KEY_MISMATCH, "another problem"))
    assert len(events.posted) == 2


async def test_an_event_that_could_not_be_posted_is_posted_at_the_next_check() -> None:
    import logging

    class Refusing(_Events):
        async def post(self, type_: str, reason: str, message: str) -> bool:
            await super().post(type_, reason, message)
            return len(self.posted) > 1  # the first post fails (the poster logged why)

    events = Refusing()
    reporter = report.Reporter(logging.getLogger("test.tls"), events)  # type: ignore[arg-type]
    problem = checks.TlsProblem(checks.EXPIRED, "certificate X expired")
    for _ in range(3):
        await reporter.problem(problem)
    assert len(events.posted) == 2
