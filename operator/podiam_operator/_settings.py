"""The operator's settings: command-line flags and ``PODIAM_*`` environment variables.

Every field is a flag (``--session-duration 3600``) and an environment
variable (``PODIAM_SESSION_DURATION=3600``); flags win. The chart sets the
environment variables. The TLS section (``--tls-*``, ``PODIAM_TLS_*``) is
what the ``tls`` package reads.
"""

from __future__ import annotations

import datetime
import enum
import logging
import os
from pathlib import Path
from typing import Any, Literal

import pydantic
import pydantic_settings

from metadata_proxy import wire

# STS limits for a role session (AssumeRole's DurationSeconds).
MIN_SESSION_SECONDS = 900
MAX_SESSION_SECONDS = 43200


# auto: the operator's tls package issues the CA and certificates into Secrets;
# secrets: user-supplied files (mounted Secrets).
TlsMode = Literal["auto", "secrets"]
LogFormat = Literal["json", "plain"]

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# An environment variable of the past, still read: (its name, the field it sets). The current name wins, and the
# two may not disagree (a proxy server name that differs between the push client and the certificates fails every
# push).
_DEPRECATED_ENV = (("PODIAM_TLS_PROXY_SERVER_NAME", "proxy_server_name"),)


class KeyType(str, enum.Enum):
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


class OperatorSettings(pydantic_settings.BaseSettings):
    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="PODIAM_",
        env_ignore_empty=True,  # an empty PODIAM_X is unset, not an empty value
        extra="ignore",
        cli_prog_name="podiam-operator",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
    )

    # --- STS -----------------------------------------------------------------
    sts_endpoint_url: str | None = pydantic.Field(default=None, description="STS endpoint URL (default: the region's endpoint)")
    sts_region: str | None = pydantic.Field(
        default=None, pattern=r"^[a-z]{2}(-[a-z0-9]+)+$",
        description="AWS region for the regional STS endpoint (default: AWS_REGION, AWS_DEFAULT_REGION, else the region "
        "in the node's metadata, else us-east-1)",
    )
    assume_role_arn: str | None = pydantic.Field(
        default=None, description="Assume this role first and assume pod roles with its credentials (Kiam's server.assumeRoleArn)"
    )
    base_role_arn: str | None = pydantic.Field(
        default=None,
        description="Prefix role names resolve against, e.g. arn:aws:iam::123456789012:role/ (default: from GetCallerIdentity)",
    )
    session_duration: int = pydantic.Field(
        default=3600, ge=MIN_SESSION_SECONDS, le=MAX_SESSION_SECONDS, description="Role session length in seconds"
    )
    refresh_point: float = pydantic.Field(
        default=0.5, gt=0.0, lt=1.0, description="Renew credentials once this fraction of their lifetime has passed"
    )
    min_remaining: int | None = pydantic.Field(
        default=None, ge=60, description="Never push credentials with less than this many seconds left (default: a third of the session)"
    )
    per_pod_sessions: bool = pydantic.Field(
        default=False, description="One session per pod, with session tags naming it (costs one AssumeRole per pod)"
    )
    session_name: str = pydantic.Field(
        default="podiam", pattern=r"^[\w+=,.@-]{2,64}$",
        description="Role session name of shared sessions (pods' iam.amazonaws.com/session-name applies to per-pod sessions only)",
    )
    allow_mirror_pods: bool = pydantic.Field(
        default=False,
        description="Serve roles to mirror pods (static pods: made by a node's kubelet from its own manifests, not by a user "
        "through the API, so a compromised node could give them any role)",
    )
    cluster_name: str | None = pydantic.Field(
        default=None,
        description="Session tag eks-cluster-name on every session (as EKS Pod Identity sets it); the roles' trust "
        "policies must then allow sts:TagSession",
    )

    # --- where roles come from (kube2iam's and Kiam's flags where they have one) ---
    iam_role_key: str = pydantic.Field(
        default="iam.amazonaws.com/role", description="Pod annotation naming the pod's role (kube2iam's --iam-role-key)"
    )
    iam_external_id: str = pydantic.Field(
        default="iam.amazonaws.com/external-id",
        description="Pod annotation holding the ExternalId for the role the pod names (kube2iam's --iam-external-id)",
    )
    irsa_service_accounts: bool = pydantic.Field(
        default=False,
        description="A ServiceAccount's eks.amazonaws.com/role-arn (IRSA's annotation) gives its pods that role when they "
        "name none and no binding selects them; under the namespace policy like a pod's annotation",
    )
    default_role: str | None = pydantic.Field(
        default=None,
        description="Role (name or ARN) of pods that name none and get none from a binding, their ServiceAccount or their "
        "namespace (kube2iam's --default-role); only in namespaces whose policy permits it",
    )
    namespace_key: str = pydantic.Field(
        default="iam.amazonaws.com/allowed-roles",
        description="Namespace annotation holding kube2iam's JSON list of permitted roles (kube2iam's --namespace-key)",
    )
    namespace_restriction_format: Literal["glob", "regexp"] = pydantic.Field(
        default="glob", description="How the entries of that list are read (kube2iam's --namespace-restriction-format)"
    )
    disable_strict_namespace_regexp: bool = pydantic.Field(
        default=False,
        description="RISKY (Kiam's flag): namespace regexes match anywhere in a role's name, not the whole name, so 'foo' "
        "permits 'foo-admin' and exclusions such as '(?!admin).*' permit 'admin'; within the operator's account only",
    )
    sts_concurrency: int = pydantic.Field(default=8, ge=1, le=256, description="STS calls in flight at most")
    sts_namespace_burst: int = pydantic.Field(
        default=100, ge=1, description="STS budget of each namespace: this many calls at once, then --sts-namespace-rate"
    )
    sts_namespace_rate: float = pydantic.Field(
        default=2.0, gt=0, description="STS calls a second each namespace may make once its burst is spent (the rest wait)"
    )
    sts_attempts: int = pydantic.Field(default=5, ge=1, le=20, description="Attempts per STS call on throttling and 5xx")
    sts_timeout: float = pydantic.Field(default=10.0, gt=0, description="Seconds per STS attempt")
    sts_retry_base: float = pydantic.Field(default=0.2, gt=0, description="First backoff (seconds) between STS attempts")
    failure_retry_max: float = pydantic.Field(
        default=300.0, gt=0, description="Longest wait (seconds) before a failed role (e.g. AccessDenied) is tried again"
    )

    # --- proxies -------------------------------------------------------------
    proxy_namespace: str = pydantic.Field(default="podiam-system", description="Namespace of the proxy pods")
    proxy_selector: str = pydantic.Field(
        default="app.kubernetes.io/name=podiam-proxy", description="Label selector of the proxy pods (k=v[,k=v])"
    )
    proxy_control_port: int = pydantic.Field(default=8182, ge=1, le=65535, description="The proxies' control (push) port")
    proxy_server_name: str = pydantic.Field(
        default=wire.PROXY_SERVER_NAME, min_length=1,
        description="DNS name verified in the proxies' server certificates (TLS auto mode issues theirs with it; "
        "PODIAM_TLS_PROXY_SERVER_NAME, its former second name, is still read)",
    )
    push_timeout: float = pydantic.Field(default=5.0, gt=0, description="Seconds per push request")
    push_concurrency: int = pydantic.Field(default=64, ge=1, description="Push requests in flight at most (all nodes)")
    anti_entropy_interval: float = pydantic.Field(
        default=30.0, gt=0, description="Seconds between checks of each proxy's state (repairs drift, detects restarts)"
    )
    node_taint: str = pydantic.Field(
        default="podiam.io/agent-not-ready", description="Start-up taint removed from a node once its proxy has its snapshot"
    )
    manage_node_taint: bool = pydantic.Field(default=True, description="Remove the start-up taint (needs patch on nodes)")
    status_configmap: str = pydantic.Field(
        default="podiam-status", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", max_length=253,
        description="ConfigMap in the operator's namespace (else --proxy-namespace) where the active replica publishes its "
        "state for kubectl podiam: settings its decisions use, its AWS account, each proxy's last push, each role's "
        "credential expiry and last STS error; nothing secret ('': not written)",
    )

    # --- the container-credentials path (EKS Pod Identity's endpoint) ----------
    container_credentials: bool = pydantic.Field(
        default=True,
        description="Push the API server's service-account keys (its JWKS) to the proxies, which check pods' projected "
        "ServiceAccount tokens with them on 169.254.170.23; and serve hostNetwork pods there (token-only entries) rather "
        "than refusing them",
    )
    service_account_keys_interval: float = pydantic.Field(
        default=60.0, ge=5.0, description="Seconds between two reads of the API server's service-account keys (key rotation)"
    )

    # --- the injection webhook (the container-credentials path's variables and token, for opted-in pods) ---
    webhook_port: int = pydantic.Field(
        default=0, ge=0, le=65535,
        description="Port of the mutating admission webhook that gives opted-in pods AWS_CONTAINER_CREDENTIALS_FULL_URI, "
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE and the projected token (HTTPS, POST /container-credentials; 0: not "
        "served; the chart: 8187). The MutatingWebhookConfiguration says which pods (the chart registers it)",
    )
    webhook_address: str = pydantic.Field(
        default="0.0.0.0", description="Address of the webhook (on the host network the chart sets the pod's IP)"
    )
    webhook_cert_file: Path = pydantic.Field(
        default=Path("/var/run/podiam/webhook/tls.crt"),
        description="The webhook's serving certificate (PEM; written by TLS auto mode when PODIAM_TLS_WEBHOOK_SERVICE is "
        "set, else yours); a changed file is loaded for new connections",
    )
    webhook_key_file: Path = pydantic.Field(default=Path("/var/run/podiam/webhook/tls.key"), description="Its key (PEM)")
    webhook_token_audience: str = pydantic.Field(
        default="pods.eks.amazonaws.com",
        min_length=1,
        description="Audience of the token the webhook projects (the proxies' --container-credentials-audience)",
    )
    webhook_token_expiration: int = pydantic.Field(
        default=86400, ge=600, le=2**31 - 1,
        description="Lifetime (seconds) of the projected token (the kubelet renews it at four fifths of it; EKS's webhook: 86400)",
    )

    # --- the operator's own AWS identity --------------------------------------
    operator_node_identity: bool = pydantic.Field(
        default=False,
        description="Push an entry for each of the operator's own pods (in --operator-namespace, running as "
        "--operator-service-account) to its node's proxy, which answers their credential requests from the node's "
        "metadata service: the operator on the pod network gets the node's IAM role, as a host-network process "
        "would. Only pods that can run as that ServiceAccount in that namespace get it.",
    )
    operator_namespace: str | None = pydantic.Field(default=None, description="The operator's namespace (the chart: the pod's own)")
    operator_service_account: str | None = pydantic.Field(
        default=None, description="The operator's ServiceAccount (the chart: the pod's own)"
    )

    # --- TLS (operator -> proxy): the tls package ------------------------------
    tls_mode: TlsMode = pydantic.Field(default="auto", description="auto: issue certificates; secrets: use the files below")
    tls_client_cert_file: Path = pydantic.Field(default=Path("/var/run/podiam/tls/tls.crt"), description="Client certificate (PEM)")
    tls_client_key_file: Path = pydantic.Field(default=Path("/var/run/podiam/tls/tls.key"), description="Client key (PEM)")
    tls_ca_file: Path = pydantic.Field(default=Path("/var/run/podiam/tls/ca.crt"), description="CA bundle the proxies chain to (PEM)")
    tls_operator_identity: str = pydantic.Field(
        default=wire.OPERATOR_IDENTITY, min_length=1,
        description="The identity the proxies require of the operator's certificate (CN or DNS name; the proxies' "
        "--operator-identity; the guide's cfssl certificates: kiam-server)",
    )
    tls_namespace: str | None = pydantic.Field(
        default=None, description="Namespace of the TLS Secrets: the operator's own (default: its service account's)"
    )
    tls_pod_name: str | None = pydantic.Field(
        default=None,
        description="The operator's pod, where TLS Events go (default: $POD_NAME; unset: on the operator's Secret)",
    )
    tls_key_type: KeyType = pydantic.Field(default=KeyType.ECDSA_P256, description="auto: the key type of what is issued")
    tls_ca_lifetime: datetime.timedelta = pydantic.Field(
        default=datetime.timedelta(days=3650), description="auto: the CA's lifetime (seconds, 2160h, 90d or P90D)"
    )
    tls_leaf_lifetime: datetime.timedelta = pydantic.Field(
        default=datetime.timedelta(days=90), description="auto: the certificates' lifetime (shorter than the CA's)"
    )
    # 2/3, as cert-manager does: a 90-day leaf is renewed with 30 days left.
    tls_renew_at: float = pydantic.Field(
        default=2 / 3, gt=0.0, lt=1.0, description="Renew a certificate once this fraction of its lifetime has passed"
    )
    # Long enough for the kubelet to put an updated Secret into every proxy pod (about a minute, plus its cache
    # TTL) and for standby replicas to pick it up (the check interval).
    tls_ca_overlap: datetime.timedelta = pydantic.Field(
        default=datetime.timedelta(minutes=10), description="auto: how long each step of a CA rotation waits for the next"
    )
    tls_check_interval: datetime.timedelta = pydantic.Field(
        default=datetime.timedelta(seconds=60),
        description="How often the Secrets (auto) or the mounted files (secrets) are read again, renewed when due, checked",
    )
    tls_ca_secret: str = pydantic.Field(default="podiam-ca", description="auto: the CA's Secret")
    tls_proxy_secret: str = pydantic.Field(default="podiam-proxy-tls", description="The proxies' Secret (auto: issued)")
    tls_operator_secret: str = pydantic.Field(default="podiam-operator-tls", description="auto: the operator's Secret")
    # The guide's agent.pem / agent-key.pem / ca.pem, cert-manager's tls.crt / tls.key / ca.crt; auto mode always
    # writes tls.crt / tls.key / ca.crt.
    tls_proxy_cert_key: str = pydantic.Field(default="tls.crt", description="secrets: the certificate's key in the proxies' Secret")
    tls_proxy_key_key: str = pydantic.Field(default="tls.key", description="secrets: the private key's key in the proxies' Secret")
    tls_proxy_ca_key: str = pydantic.Field(default="ca.crt", description="secrets: the CA bundle's key in the proxies' Secret")
    tls_check_proxy_secret: bool = pydantic.Field(
        default=True,
        description="secrets: read the proxies' Secret and check it too, so a mismatch shows before the first push "
        "fails (needs get on that Secret)",
    )
    tls_webhook_service: str | None = pydantic.Field(
        default=None,
        description="auto: the injection webhook's Service; its serving certificate names <service>.<namespace>.svc "
        "and is written to --webhook-cert-file and --webhook-key-file (unset: none is issued)",
    )
    tls_webhook_hosts: str = pydantic.Field(
        default="", description="auto: more DNS names or IP addresses for that certificate, comma-separated (a "
        "configuration that calls the webhook by URL)",
    )
    tls_webhook_secret: str = pydantic.Field(default="podiam-webhook-tls", description="auto: the webhook certificate's Secret")
    tls_webhook_configuration: str | None = pydantic.Field(
        default=None, description="auto: the MutatingWebhookConfiguration whose caBundle the active replica keeps "
        "equal to the CA bundle",
    )

    # --- operation -----------------------------------------------------------
    log_level: str = pydantic.Field(default="INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR)$", description="Log level")
    log_format: LogFormat = pydantic.Field(default="json", description="json or plain (text: the same, as the proxy once said)")
    metrics_address: str = pydantic.Field(
        default="0.0.0.0", description="Address of /metrics and /readyz (on the host network the chart sets the pod's IP)"
    )
    metrics_port: int = pydantic.Field(default=8185, ge=0, le=65535, description="Port of /metrics and /readyz (0: off)")
    metrics_name_labels: bool = pydantic.Field(
        default=False,
        description="Name roles and nodes in label values (podiam_sts_errors_total, podiam_node_push_seconds): only where "
        "the metrics port is reachable by Prometheus alone (a NetworkPolicy), since anything reaching it reads them",
    )
    liveness_address: str = pydantic.Field(
        default="0.0.0.0", description="Address of kopf's /healthz (on the host network the chart sets the pod's IP)"
    )
    liveness_port: int = pydantic.Field(default=8184, ge=0, le=65535, description="Port of kopf's /healthz (0: off)")
    peering_name: str = pydantic.Field(default="podiam", description="ClusterKopfPeering object the replicas share")
    peering_priority: int = pydantic.Field(
        default=0, ge=-9000, le=9000,
        description="Peering priority: a live replica with a higher one is the active one; among equal ones the oldest is "
        "(a new replica never preempts), replicas started in the same second by a random draw",
    )
    peering_lifetime: int = pydantic.Field(default=15, ge=5, description="Seconds a silent replica counts as alive")
    standalone: bool = pydantic.Field(default=False, description="No peering: for a single replica only")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _deprecated_environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old, field in _DEPRECATED_ENV:
            value = os.environ.get(old)
            if not value:
                continue
            current = data.get(field)
            if current is not None and current != value:
                raise ValueError(f"{old} (deprecated) is {value!r} but --{field.replace('_', '-')} is {current!r}: "
                                 "set only the latter")
            if current is None:
                logging.getLogger(__name__).warning("%s is deprecated: set PODIAM_%s instead", old, field.upper())
                data = {**data, field: value}
        if not data.get("tls_pod_name") and os.environ.get("POD_NAME"):
            data = {**data, "tls_pod_name": os.environ["POD_NAME"]}  # the downward API's name, as the chart sets it
        return data

    @pydantic.field_validator("log_format", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return "plain" if value == "text" else value

    @pydantic.field_validator("tls_ca_lifetime", "tls_leaf_lifetime", "tls_ca_overlap", "tls_check_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return datetime.timedelta(seconds=wire.duration_seconds(value))
        except ValueError:
            return value  # ISO 8601 ("P90D"), left to pydantic

    @pydantic.field_validator("tls_ca_lifetime", "tls_leaf_lifetime", "tls_ca_overlap", "tls_check_interval")
    @classmethod
    def _positive(cls, value: datetime.timedelta) -> datetime.timedelta:
        if value <= datetime.timedelta(0):
            raise ValueError("must be positive")
        return value

    @pydantic.model_validator(mode="after")
    def _leaf_within_ca(self) -> OperatorSettings:
        if self.tls_leaf_lifetime >= self.tls_ca_lifetime:
            raise ValueError("--tls-leaf-lifetime must be shorter than --tls-ca-lifetime")
        return self

    @pydantic.field_validator("assume_role_arn")
    @classmethod
    def _role_arn(cls, value: str | None) -> str | None:
        from podiam_operator._core import roles  # local: settings must stay importable on their own

        if value is not None:
            roles.parse_role_arn(value)
        return value

    @pydantic.field_validator("cluster_name")
    @classmethod
    def _tag_value(cls, value: str | None) -> str | None:
        from podiam_operator._core import tags

        if value is not None and not (value and tags.VALUE.fullmatch(value)):
            raise ValueError("a session tag value: 1-256 letters, digits, spaces and _.:/=+-@")
        return value

    @pydantic.field_validator("default_role")
    @classmethod
    def _default_role(cls, value: str | None) -> str | None:
        from podiam_operator._core import roles

        if value is not None:
            roles.resolve(value, roles.BaseArn("aws", "000000000000"))  # its form only: the account comes later
        return value

    @pydantic.field_validator("iam_role_key", "iam_external_id", "namespace_key")
    @classmethod
    def _annotation_key(cls, value: str) -> str:
        from podiam_operator._core import selectors

        try:
            selectors.check_key(value, "annotation key")
        except selectors.SelectorError as error:
            raise ValueError(str(error)) from None
        return value

    @pydantic.field_validator("base_role_arn")
    @classmethod
    def _base_arn(cls, value: str | None) -> str | None:
        from podiam_operator._core import roles

        if value is not None:
            return roles.BaseArn.parse(value).prefix
        return value

    @pydantic.field_validator("proxy_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        parse_label_pairs(value)
        return value

    @pydantic.model_validator(mode="after")
    def _own_pods_named(self) -> OperatorSettings:
        if self.operator_node_identity and not (self.operator_namespace and self.operator_service_account):
            raise ValueError("--operator-node-identity needs --operator-namespace and --operator-service-account "
                             "(PODIAM_OPERATOR_NAMESPACE, PODIAM_OPERATOR_SERVICE_ACCOUNT; the chart sets both from the pod)")
        return self

    @property
    def effective_min_remaining(self) -> int:
        """Never push credentials with less than this left: 20 minutes for 1-hour sessions."""
        return self.min_remaining if self.min_remaining is not None else self.session_duration // 3

    def proxy_labels(self) -> dict[str, str]:
        return parse_label_pairs(self.proxy_selector)

    def tls_webhook_host_list(self) -> tuple[str, ...]:
        return tuple(host.strip() for host in self.tls_webhook_hosts.split(",") if host.strip())

    def tls_resolved_namespace(self) -> str:
        """Where the TLS Secrets live; ValueError when it is neither set nor in the service account mount."""
        if self.tls_namespace:
            return self.tls_namespace
        try:
            return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            raise ValueError(
                "the operator's namespace is unknown: set PODIAM_TLS_NAMESPACE "
                f"(no service account namespace at {_SERVICE_ACCOUNT_NAMESPACE})"
            ) from None


def parse_label_pairs(selector: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in selector.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key.strip():
            raise ValueError(f"proxy selector must be key=value[,key=value], got {selector!r}")
        labels[key.strip()] = value.strip()
    return labels


def from_argv(argv: list[str] | None) -> OperatorSettings:
    """Settings from flags (``argv``) over environment variables over defaults."""
    return OperatorSettings(_cli_parse_args=argv if argv is not None else True)  # type: ignore[call-arg]
