"""``auto`` mode: the CA and both leaves in Secrets of the operator's namespace.

Every replica may run :meth:`AutoTls.sync`: creation is first-wins under
fixed names, and every later write is guarded by resourceVersion, so two
replicas can never leave two CAs or mismatched leaves behind. Only a replica
with ``may_write`` renews or rotates; any replica creates what is missing.

Operators may ask for a renewal or a rotation through annotations on the CA
Secret, picked up at the next check::

    kubectl -n <ns> annotate secret podiam-ca --overwrite podiam.io/renew="$(date +%s)"
    kubectl -n <ns> annotate secret podiam-ca --overwrite podiam.io/rotate-ca="$(date +%s)"
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

from metadata_proxy import wire
from podiam_operator import _settings
from podiam_operator.tls import authority, checks, leaves, pki, report, store

RENEW_REQUEST = "podiam.io/renew"
RENEW_HANDLED = "podiam.io/renew-handled"
ROTATE_REQUEST = "podiam.io/rotate-ca"
ROTATE_HANDLED = "podiam.io/rotate-ca-handled"

# Conflicting writes in a row before giving up until the next check.
_ATTEMPTS = 5
_WEBHOOK_RETRY = datetime.timedelta(seconds=30)  # a webhook certificate that could not be issued, tried again

Clock = Callable[[], datetime.datetime]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Contention(RuntimeError):
    """Other writers kept winning; the next check tries again."""


@dataclasses.dataclass(frozen=True)
class ClientMaterial:
    """What the operator's push client loads: its certificate and key, and the CA bundle it trusts."""

    pair: pki.KeyPair
    bundle_pem: bytes
    next_check: datetime.datetime
    webhook: pki.KeyPair | None = None  # the injection webhook's serving certificate, when there is a webhook


def _pending(annotations: dict[str, str], request: str, handled: str) -> str | None:
    value = annotations.get(request)
    return value if value is not None and value != annotations.get(handled) else None


class AutoTls:
    def __init__(
        self,
        secrets: store.SecretStore,
        settings: _settings.OperatorSettings,
        reporter: report.Reporter,
        clock: Clock = utcnow,
    ) -> None:
        self.secrets = secrets
        self.settings = settings
        self.reporter = reporter
        self.clock = clock

    def _where(self, name: str) -> str:
        return f"Secret {self.secrets.namespace}/{name}"

    async def sync(self, *, may_write: bool) -> ClientMaterial:
        state, ca_secret = await self._authority(may_write=may_write)
        renew = _pending(ca_secret.annotations, RENEW_REQUEST, RENEW_HANDLED) if may_write else None
        proxy = await self._leaf(self.settings.tls_proxy_secret, leaves.proxy_spec(self.settings), state, may_write, renew, "proxy")
        client = await self._leaf(self.settings.tls_operator_secret, leaves.operator_spec(self.settings), state, may_write, renew, "operator")
        webhook, checks_at = None, [authority.next_check(state, self.settings, self.clock()),
                                    leaves.next_check(proxy, self.settings), leaves.next_check(client, self.settings)]
        if self.settings.tls_webhook_service:
            # The pushes never wait on the webhook: its certificate's trouble is logged and retried on its own.
            try:
                spec = leaves.webhook_spec(self.settings, self.secrets.namespace)
                webhook = await self._leaf(self.settings.tls_webhook_secret, spec, state, may_write, renew, "webhook")
                checks_at.append(leaves.next_check(webhook, self.settings))
            except Exception as error:  # noqa: BLE001 - whatever it is, the proxies' and the operator's pairs stand
                self.reporter.logger.warning("TLS: the injection webhook's certificate: %s: %s (will retry)",
                                             type(error).__name__, error)
                checks_at.append(self.clock() + _WEBHOOK_RETRY)
        if renew is not None:
            await self.secrets.annotate(self.settings.tls_ca_secret, {RENEW_HANDLED: renew})
        next_check = min(checks_at)
        return ClientMaterial(pair=client, bundle_pem=state.bundle_pem(), next_check=next_check, webhook=webhook)

    async def _authority(self, *, may_write: bool) -> tuple[authority.CaState, store.Stored]:
        name = self.settings.tls_ca_secret
        for _ in range(_ATTEMPTS):
            stored = await self.secrets.read(name)
            now = self.clock()
            if stored is None:
                state = authority.initial(self.settings, now)
                data, annotations = authority.to_secret(state)
                created = await self.secrets.create(name, data, annotations, component="ca")
                if created is None:
                    self.reporter.logger.info("TLS: another replica created %s first; using its CA", self._where(name))
                    continue
                await self.reporter.changed("TLSCACreated", f"created CA {pki.describe(state.active.cert)} in {self._where(name)}")
                return state, created
            try:
                state = authority.from_secret(stored.data, stored.annotations, self._where(name))
            except checks.TlsProblem as problem:
                raise checks.TlsProblem(
                    problem.reason,
                    f"{problem.message}; podiam never overwrites a CA it cannot read: fix the Secret, or delete it "
                    "to have a new CA made (every certificate is then re-issued)",
                ) from None
            if not may_write:
                return state, stored
            rotate = _pending(stored.annotations, ROTATE_REQUEST, ROTATE_HANDLED)
            following = authority.step(state, self.settings, now, force=rotate is not None)
            handled = {ROTATE_HANDLED: rotate} if rotate is not None else {}
            if following is None:
                if rotate is not None:  # asked for during a rotation: that rotation serves
                    await self.secrets.annotate(name, handled)
                return state, stored
            data, annotations = authority.to_secret(following)
            replaced = await self.secrets.replace(stored, data, {**annotations, **handled})
            if replaced is None:
                continue  # someone wrote in between: look again
            await self.reporter.changed("TLSCARotation", self._describe_step(following, name))
            return following, replaced
        raise Contention(f"{self._where(name)} kept changing under {_ATTEMPTS} attempts to update it")

    def _describe_step(self, state: authority.CaState, name: str) -> str:
        match state.phase:
            case authority.Phase.INTRODUCED:
                assert state.pending is not None
                return (f"CA rotation: introduced CA {pki.describe(state.pending.cert)} into the trust bundle of {self._where(name)}; "
                        f"it starts signing in {self.settings.tls_ca_overlap}")
            case authority.Phase.SWITCHED:
                return (f"CA rotation: CA {pki.describe(state.active.cert)} now signs; certificates are re-issued and the old CA "
                        f"leaves the trust bundle in {self.settings.tls_ca_overlap}")
            case _:
                return f"CA rotation complete: the trust bundle holds only CA {pki.describe(state.active.cert)}"

    async def _leaf(
        self,
        name: str,
        spec: leaves.Spec,
        state: authority.CaState,
        may_write: bool,
        renew: str | None,
        component: str,
    ) -> pki.KeyPair:
        bundle = state.bundle_pem()
        for _ in range(_ATTEMPTS):
            stored = await self.secrets.read(name)
            now = self.clock()
            if stored is None:
                pair = leaves.issue(state, spec, self.settings, now)
                if await self.secrets.create(name, leaves.to_secret(pair, state), {}, component=component) is None:
                    self.reporter.logger.info("TLS: another replica created %s first; using its certificate", self._where(name))
                    continue
                await self.reporter.changed("TLSCertificateIssued", self._describe_leaf("issued", pair, name))
                return pair
            held = leaves.from_secret(stored.data)
            why = leaves.due(held, state, spec, self.settings, now)
            if why is None and renew is not None:
                why = "a renewal was requested"
            if not may_write or (why is None and stored.data.get(leaves.BUNDLE) == bundle):
                if held is None:
                    raise checks.TlsProblem(
                        checks.MALFORMED,
                        f"{self._where(name)} holds no usable certificate and key; the active operator replica re-issues it",
                    )
                return held
            pair = held if why is None and held is not None else leaves.issue(state, spec, self.settings, now)
            if await self.secrets.replace(stored, leaves.to_secret(pair, state), {}) is None:
                continue
            if why is not None:
                await self.reporter.changed("TLSCertificateRenewed", self._describe_leaf(f"renewed ({why})", pair, name))
            else:
                await self.reporter.changed("TLSTrustBundleUpdated", f"updated the CA bundle in {self._where(name)}")
            return pair
        raise Contention(f"{self._where(name)} kept changing under {_ATTEMPTS} attempts to update it")

    def _describe_leaf(self, what: str, pair: pki.KeyPair, name: str) -> str:
        cert = pair.cert
        return (f"{what} certificate {pki.describe(cert)} (serial {cert.serial_number:x}, valid until "
                f"{wire.rfc3339(cert.not_valid_after_utc)}, issued by {pki.describe_issuer(cert)}) in {self._where(name)}")
