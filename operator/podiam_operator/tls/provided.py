"""``secrets`` mode: certificates the user provides (cfssl as in the guide, cert-manager, or any CA).

The operator mounts its Secret (the guide's ``kiam-server-tls``: server.pem,
server-key.pem, ca.pem; or cert-manager's tls.crt, tls.key, ca.crt) and the
settings name the three files. Nothing is written: this module checks what
the user gave, at start and at every check, so a wrong file shows up as a
message instead of as failing pushes. With ``check_proxy_secret`` it also
reads the proxies' Secret (the guide's ``kiam-agent-tls``) and checks that
the operator and the proxies will accept each other.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from cryptography import x509

from metadata_proxy import wire
from podiam_operator import _settings
from podiam_operator.tls import checks, files, pki, report, store


@dataclasses.dataclass(frozen=True)
class ClientFiles:
    cert: Path
    key: Path
    ca: Path


def _load(cert_pem: bytes, key_pem: bytes, ca_pem: bytes, sources: checks.Sources) -> tuple[pki.KeyPair, tuple[x509.Certificate, ...]]:
    try:
        chain = pki.certs_from_pem(cert_pem, sources.cert)
        key = pki.key_from_pem(key_pem, sources.key)
        bundle = pki.certs_from_pem(ca_pem, sources.ca)
    except pki.PemError as error:
        raise checks.TlsProblem(checks.MALFORMED, str(error)) from None
    return pki.KeyPair(chain, key), bundle


def _summary(who: str, cert: x509.Certificate, ca: x509.Certificate) -> str:
    return f"{who} certificate {pki.describe(cert)} (issued by {pki.describe(ca)}) valid until {wire.rfc3339(cert.not_valid_after_utc)}"


class ProvidedTls:
    def __init__(
        self,
        paths: ClientFiles,
        settings: _settings.OperatorSettings,
        reporter: report.Reporter,
        secrets: store.SecretStore | None,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.reporter = reporter
        self.secrets = secrets

    async def check(self, now: datetime.datetime) -> str:
        """Raise the first problem found; return a summary of what is in use."""
        sources = checks.Sources(cert=str(self.paths.cert), key=str(self.paths.key), ca=str(self.paths.ca))
        pair, bundle = _load(
            files.read_file(self.paths.cert, "operator's certificate"),
            files.read_file(self.paths.key, "operator's private key"),
            files.read_file(self.paths.ca, "CA"),
            sources,
        )
        ca = checks.check_material(pair, bundle, sources, server=False, name=self.settings.tls_operator_identity, now=now)
        summary = [_summary("operator", pair.cert, ca)]
        warning = checks.expiry_warning(pair.cert, sources.cert, now, self.settings.tls_renew_at)
        if warning:
            await self.reporter.warning("TLSCertificateExpiring", warning)
        if self.settings.tls_check_proxy_secret and self.secrets is not None:
            summary.append(await self._check_proxy(bundle, pair, sources, now))
        return "; ".join(summary)

    async def _check_proxy(
        self,
        operator_bundle: tuple[x509.Certificate, ...],
        operator_pair: pki.KeyPair,
        operator_sources: checks.Sources,
        now: datetime.datetime,
    ) -> str:
        assert self.secrets is not None
        settings = self.settings
        where = f"Secret {self.secrets.namespace}/{settings.tls_proxy_secret}"
        try:
            stored = await self.secrets.read(settings.tls_proxy_secret)
        except checks.TlsProblem as problem:
            # Not being allowed to look is a deployment choice, not a TLS fault.
            await self.reporter.warning(
                "TLSProxySecretUnchecked",
                f"{problem.message}; the proxies' certificate is not checked (set PODIAM_TLS_CHECK_PROXY_SECRET=false to silence this)",
            )
            return f"proxies' certificate in {where} not checked"
        if stored is None:
            raise checks.TlsProblem(
                checks.MISSING,
                f"{where}, which the proxies mount, does not exist: create it (the guide's kiam-agent-tls, or a cert-manager "
                "Certificate's secretName) or set PODIAM_TLS_PROXY_SECRET (chart: tls.proxy.secretName) to its name",
            )
        keys = (settings.tls_proxy_cert_key, settings.tls_proxy_key_key, settings.tls_proxy_ca_key)
        absent = [key for key in keys if key not in stored.data]
        if absent:
            raise checks.TlsProblem(
                checks.MISSING,
                f"{where} has no key {', '.join(absent)} (it holds: {', '.join(sorted(stored.data)) or 'nothing'}); set the proxies' "
                "file names (chart: tls.proxy.certFileName / keyFileName / caFileName; env PODIAM_TLS_PROXY_CERT_KEY / "
                "PODIAM_TLS_PROXY_KEY_KEY / PODIAM_TLS_PROXY_CA_KEY) to the keys it has",
            )
        sources = checks.Sources(cert=f"{where} key {keys[0]}", key=f"{where} key {keys[1]}", ca=f"{where} key {keys[2]}")
        pair, proxy_bundle = _load(stored.data[keys[0]], stored.data[keys[1]], stored.data[keys[2]], sources)
        # The operator verifies the proxies' certificate against its own CA
        # file, and the proxies verify the operator's against theirs.
        trusted_by_operator = dataclasses.replace(sources, ca=f"the operator's CA file {operator_sources.ca}")
        ca = checks.check_material(pair, operator_bundle, trusted_by_operator, server=True, name=settings.proxy_server_name, now=now)
        checks.check_bundle(proxy_bundle, sources.ca, now)
        checks.check_chain(operator_pair.chain, proxy_bundle, operator_sources.cert, f"the proxies' CA ({sources.ca})", now)
        warning = checks.expiry_warning(pair.cert, sources.cert, now, settings.tls_renew_at)
        if warning:
            await self.reporter.warning("TLSCertificateExpiring", warning)
        return _summary("proxies'", pair.cert, ca)
