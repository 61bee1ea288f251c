"""TLS between the operator and the proxies, operator side.

Entry points for the operator (see ``runtime.Tls`` for the details)::

    from podiam_operator import tls

    @kopf.on.startup()
    async def startup(settings, logger, ...):
        await tls.prepare(operator_settings, logger)      # writes/validates the client files
        memo.tls_task = asyncio.create_task(tls.run_renewals(is_active=...))

    /readyz:  tls.status().ok, tls.status().message
    failed push: tls.explain_handshake_failure(error, tls.settings().proxy_server_name)
    server_hostname for pushes: tls.settings().proxy_server_name

``tls_mode`` (the operator's ``PODIAM_TLS_MODE``):

- ``auto``: a CA in Secret ``podiam-ca`` (created once, race-free across
  replicas), the proxies' server certificate in ``podiam-proxy-tls`` (the
  proxy DaemonSet mounts it), the operator's client certificate in
  ``podiam-operator-tls``; the client certificate, key and CA bundle are
  written to the operator's ``tls_client_cert_file`` / ``tls_client_key_file``
  / ``tls_ca_file``. Renewed at 2/3 of their life, CA rotated with overlap.
- ``secrets``: the user's Secrets (cfssl as in the guide, or cert-manager),
  mounted; checked at start and at every ``check_interval``.

Settings of this package: :class:`TlsSettings` (env prefix ``PODIAM_TLS_``).
"""

from __future__ import annotations

from collections.abc import Callable

from podiam_operator.tls import report, runtime
from podiam_operator.tls._settings import KeyType, TlsSettings
from podiam_operator.tls.checks import TlsProblem
from podiam_operator.tls.explain import explain_handshake_failure, explain_refusal
from podiam_operator.tls.report import Status

__all__ = [
    "KeyType", "Status", "TlsProblem", "TlsSettings", "close", "explain_handshake_failure", "explain_refusal",
    "prepare", "run_renewals", "settings", "status",
]

_current: runtime.Tls | None = None


async def prepare(
    operator_settings: runtime.OperatorTlsSettings,
    logger: report.Logger | None = None,
    *,
    tls_settings: TlsSettings | None = None,
) -> Status:
    """First pass, before the first push: never raises for TLS trouble (see :func:`status`).

    In ``auto`` mode the client files exist afterwards unless the status says why not.
    """
    global _current
    if _current is None:
        _current = runtime.Tls(operator_settings, logger, tls_settings=tls_settings)
    await _current.check_once(may_write=True)
    return _current.status()


async def run_renewals(is_active: Callable[[], bool] | None = None) -> None:
    """Runs until cancelled: renewals, rotations, standby sync (auto); re-checks (secrets). Call after :func:`prepare`."""
    if _current is None:
        raise RuntimeError("tls.run_renewals() needs tls.prepare() first")
    await _current.run(is_active)


def status() -> Status:
    if _current is None:
        return Status(ok=False, message="TLS not prepared yet")
    return _current.status()


def settings() -> TlsSettings:
    """The TLS settings in force (e.g. ``proxy_server_name`` for the push client's ``server_hostname``)."""
    return _current.settings if _current is not None else TlsSettings()


async def close() -> None:
    global _current
    if _current is not None:
        await _current.close()
        _current = None
