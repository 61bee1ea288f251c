"""The operator's TLS at run time: one pass at start, then periodic checks, renewals and rotations.

One :class:`Tls` per operator, built by ``_assembly`` on the operator's API client and passed to whoever needs it
(readiness, the published status, the renewal task); its settings are the TLS section of the operator's settings.

- ``auto`` (``--tls-mode``): a CA in Secret ``podiam-ca`` (created once, race-free across replicas), the proxies'
  server certificate in ``podiam-proxy-tls`` (the proxy DaemonSet mounts it), the operator's client certificate in
  ``podiam-operator-tls``, written to ``--tls-client-cert-file`` / ``--tls-client-key-file`` / ``--tls-ca-file``;
  renewed at 2/3 of their life, the CA rotated with overlap; the injection webhook's serving certificate and caBundle.
- ``secrets``: the user's Secrets (cfssl as in the guide, or cert-manager), mounted; checked at start and at every
  ``--tls-check-interval``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable

import aiohttp
from kubernetes_asyncio.client import exceptions as kube_exceptions

from metadata_proxy import wire
from podiam_operator import _settings
from podiam_operator._kits import kube as kubes
from podiam_operator.tls import auto, checks, files, leaves, pki, provided, report, store, webhook

_FIRST_RETRY = datetime.timedelta(seconds=1)
_WEBHOOK_RETRY = datetime.timedelta(seconds=5)


class Tls:
    def __init__(
        self,
        settings: _settings.OperatorSettings,
        kube: kubes.Kube,
        logger: report.Logger | None = None,
        *,
        clock: auto.Clock = auto.utcnow,
    ) -> None:
        self.settings = settings
        self.paths = provided.ClientFiles(cert=settings.tls_client_cert_file, key=settings.tls_client_key_file, ca=settings.tls_ca_file)
        self.kube = kube
        self.logger = logger or logging.getLogger("podiam_operator.tls")
        self.clock = clock
        self.reporter = report.Reporter(self.logger, None)
        self._auto: auto.AutoTls | None = None
        self._provided: provided.ProvidedTls | None = None
        self._failures = 0

    def status(self) -> report.Status:
        return self.reporter.status

    async def _setup(self) -> None:
        if self._auto is not None or self._provided is not None:
            return
        try:
            namespace = self.settings.tls_resolved_namespace()
        except ValueError as error:
            raise checks.TlsProblem("TLSConfigError", f"TLS set-up cannot start: {error}") from None
        secrets = store.SecretStore(self.kube.core, namespace)
        if self.settings.tls_pod_name:
            self.reporter.events = report.Events(self.kube, namespace, "Pod", self.settings.tls_pod_name)
        else:
            self.reporter.events = report.Events(self.kube, namespace, "Secret", self.settings.tls_operator_secret)
        if self.settings.tls_mode == "auto":
            self._auto = auto.AutoTls(secrets, self.settings, self.reporter, self.clock)
        else:
            self._provided = provided.ProvidedTls(self.paths, self.settings, self.reporter, secrets)

    async def check_once(self, *, may_write: bool = True) -> datetime.datetime:
        """One pass; never raises for TLS or API trouble (it is reported). Returns when the next pass is due."""
        now = self.clock()
        try:
            await self._setup()
            if self._auto is not None:
                due = await self._auto_pass(may_write)
            else:
                assert self._provided is not None
                await self.reporter.ready(f"TLS mode secrets: {await self._provided.check(now)}")
                due = now + self.settings.tls_check_interval
        except checks.TlsProblem as problem:
            await self.reporter.problem(problem)
        except Exception as error:  # API down, conflicts, or a bug: reported, retried, never a crash loop
            transient = isinstance(error, (kube_exceptions.ApiException, aiohttp.ClientError, asyncio.TimeoutError, auto.Contention, OSError))
            if transient:
                message = f"TLS set-up could not reach the Kubernetes API or complete: {_short(error)}"
            else:
                message = f"TLS set-up failed unexpectedly: {_short(error)}"
                self.logger.exception("TLS: unexpected error")
            if self.reporter.status.ok:
                # The material on disk is still good: pushes keep working.
                self.logger.warning("%s (will retry; the current certificates stay in use)", message)
            else:
                await self.reporter.problem(checks.TlsProblem("TLSSetupFailed", message))
        else:
            self._failures = 0
            return min(due, now + self.settings.tls_check_interval)
        self._failures += 1
        retry = min(_FIRST_RETRY * (1 << min(self._failures - 1, 10)), self.settings.tls_check_interval)
        return now + retry

    async def _auto_pass(self, may_write: bool) -> datetime.datetime:
        assert self._auto is not None
        material = await self._auto.sync(may_write=may_write)
        bundle = pki.certs_from_pem(material.bundle_pem, "the CA bundle")
        sources = checks.Sources(cert=f"Secret {self.settings.tls_operator_secret} key {leaves.CERT}",
                                 key=f"Secret {self.settings.tls_operator_secret} key {leaves.KEY}",
                                 ca=f"Secret {self.settings.tls_ca_secret} key ca.crt")
        checks.check_material(material.pair, bundle, sources, server=False, name=self.settings.tls_operator_identity, now=self.clock())
        changed = files.write_client_material(
            self.paths.cert, self.paths.key, self.paths.ca,
            cert=material.pair.cert_pem(), key=material.pair.key_pem(), ca=material.bundle_pem,
        )
        if changed:
            self.logger.info("TLS: wrote the operator's client certificate %s (serial %x) to %s",
                             pki.describe(material.pair.cert), material.pair.cert.serial_number, self.paths.cert)
        cert = material.pair.cert
        await self.reporter.ready(
            f"TLS mode auto: client certificate {pki.describe(cert)} valid until {wire.rfc3339(cert.not_valid_after_utc)}, "
            f"trusting {', '.join(pki.describe(ca) for ca in bundle)}"
        )
        if material.webhook is not None and not await self._webhook(material, may_write):
            return min(material.next_check, self.clock() + _WEBHOOK_RETRY)
        return material.next_check

    async def _webhook(self, material: auto.ClientMaterial, may_write: bool) -> bool:
        """The injection webhook's certificate and caBundle. Its trouble is logged, not reported: the pushes (and
        readiness) do not depend on it, and the webhook's failurePolicy decides what a pod misses meanwhile."""
        assert material.webhook is not None
        try:
            await webhook.publish(self.kube, self.settings, material.webhook, material.bundle_pem, self.logger, may_write=may_write)
        except checks.TlsProblem as problem:
            self.logger.warning("TLS: the injection webhook: %s: %s (will retry)", problem.reason, problem.message)
        except (kube_exceptions.ApiException, aiohttp.ClientError, asyncio.TimeoutError) as error:
            self.logger.warning("TLS: the injection webhook's caBundle: %s (will retry)", _short(error))
        else:
            return True
        return False

    async def run(self, is_active: Callable[[], bool] | None = None,
                  after_pass: Callable[[report.Status], None] | None = None) -> None:
        """Check, renew and rotate until cancelled. ``is_active``: may this replica renew (kopf peering)?
        ``after_pass``: told the status after every pass."""
        while True:
            may_write = True if is_active is None else is_active()
            due = await self.check_once(may_write=may_write)
            if after_pass is not None:
                after_pass(self.status())
            delay = (due - self.clock()).total_seconds()
            await asyncio.sleep(min(max(delay, 0.5), self.settings.tls_check_interval.total_seconds()))

def _short(error: BaseException) -> str:
    if isinstance(error, kube_exceptions.ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
