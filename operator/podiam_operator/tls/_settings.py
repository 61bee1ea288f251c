"""Settings of the operator-side TLS (env prefix ``PODIAM_TLS_``).

Kept apart from the operator's own settings (``PODIAM_``): those say where the
operator's client certificate, key and CA bundle live on disk and which mode
is in force; these say how ``auto`` mode makes that material and which
Secrets and names both modes use.
"""

from __future__ import annotations

import datetime
import enum
import re
from pathlib import Path

import pydantic
import pydantic_settings

from metadata_proxy import wire

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


_DURATION = re.compile(r"^(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> object:
    """Seconds ("90"), Go-style units ("2160h", "90d", "10m", "1h30m"), or ISO 8601 ("P90D") left to pydantic."""
    text = text.strip()
    try:
        return datetime.timedelta(seconds=float(text))
    except ValueError:
        pass
    match = _DURATION.match(text)
    if match and any(match.groupdict().values()):
        parts = {unit: float(number) for unit, number in match.groupdict().items() if number}
        return datetime.timedelta(days=parts.get("d", 0), hours=parts.get("h", 0), minutes=parts.get("m", 0), seconds=parts.get("s", 0))
    return text


class KeyType(str, enum.Enum):
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


class TlsSettings(pydantic_settings.BaseSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix="PODIAM_TLS_", extra="ignore")

    # Where the Secrets live: the operator's own namespace. Unset, it is read
    # from the service account mount (in a pod) and must be set otherwise.
    namespace: str | None = None
    # The operator's pod, for Events about TLS problems (downward API).
    # Unset, Events go on the operator's Secret instead.
    pod_name: str | None = pydantic.Field(default=None, validation_alias=pydantic.AliasChoices("PODIAM_TLS_POD_NAME", "POD_NAME"))

    # auto mode: what is issued.
    key_type: KeyType = KeyType.ECDSA_P256
    ca_lifetime: datetime.timedelta = datetime.timedelta(days=3650)
    leaf_lifetime: datetime.timedelta = datetime.timedelta(days=90)
    # Renew a certificate once this fraction of its lifetime has passed (2/3,
    # as cert-manager does): a 90-day leaf is renewed with 30 days left.
    renew_at: float = pydantic.Field(default=2 / 3, gt=0.0, lt=1.0)
    # How long each step of a CA rotation waits before the next one: long
    # enough for the kubelet to put an updated Secret into every proxy pod
    # (about a minute, plus its cache TTL) and for standby operator replicas
    # to pick it up (check_interval).
    ca_overlap: datetime.timedelta = datetime.timedelta(minutes=10)
    # How often the background task re-reads the Secrets (auto) or the
    # mounted files (secrets), renews what is due and re-checks validity.
    check_interval: datetime.timedelta = datetime.timedelta(seconds=60)

    # Secret names (auto mode creates them; secrets mode reads proxy_secret).
    ca_secret: str = "podiam-ca"
    proxy_secret: str = "podiam-proxy-tls"
    operator_secret: str = "podiam-operator-tls"
    # Keys of the proxies' Secret the operator checks in secrets mode (the
    # guide's agent.pem / agent-key.pem / ca.pem, cert-manager's tls.crt /
    # tls.key / ca.crt). auto mode always writes tls.crt / tls.key / ca.crt.
    proxy_cert_key: str = "tls.crt"
    proxy_key_key: str = "tls.key"
    proxy_ca_key: str = "ca.crt"
    # secrets mode: read the proxies' Secret and check it too (name, CA,
    # validity, key), so a mismatch shows before the first push fails.
    # Needs `get` on that one Secret; turn off where RBAC forbids it.
    check_proxy_secret: bool = True

    # The identity the proxies require of the operator (CN or DNS SAN; the
    # proxy's --operator-identity) and the DNS name the operator verifies in
    # the proxies' certificate when it dials them by IP. The guide's cfssl
    # certificates need e.g. operator_identity=kiam-server.
    operator_identity: str = pydantic.Field(default=wire.OPERATOR_IDENTITY, min_length=1)
    proxy_server_name: str = pydantic.Field(default=wire.PROXY_SERVER_NAME, min_length=1)

    # auto mode, the container-credentials injection webhook: the Service the API server calls it through (its
    # serving certificate names <service>.<namespace>.svc), more names or IP addresses for that certificate
    # (comma-separated; a configuration that calls the webhook by URL), the Secret the certificate is kept in, and
    # the MutatingWebhookConfiguration whose caBundle the active replica keeps equal to the CA bundle. Unset
    # service: no webhook certificate. The files it is written to are the operator's --webhook-cert-file and
    # --webhook-key-file.
    webhook_service: str | None = None
    webhook_hosts: str = ""
    webhook_secret: str = "podiam-webhook-tls"
    webhook_configuration: str | None = None

    @pydantic.field_validator("ca_lifetime", "leaf_lifetime", "ca_overlap", "check_interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @pydantic.field_validator("ca_lifetime", "leaf_lifetime", "ca_overlap", "check_interval")
    @classmethod
    def _positive(cls, value: datetime.timedelta) -> datetime.timedelta:
        if value <= datetime.timedelta(0):
            raise ValueError("must be positive")
        return value

    @pydantic.model_validator(mode="after")
    def _leaf_within_ca(self) -> TlsSettings:
        if self.leaf_lifetime >= self.ca_lifetime:
            raise ValueError("leaf_lifetime must be shorter than ca_lifetime")
        return self

    def webhook_host_list(self) -> tuple[str, ...]:
        return tuple(host.strip() for host in self.webhook_hosts.split(",") if host.strip())

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        try:
            return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            raise ValueError(
                "the operator's namespace is unknown: set PODIAM_TLS_NAMESPACE "
                f"(no service account namespace at {_SERVICE_ACCOUNT_NAMESPACE})"
            ) from None
