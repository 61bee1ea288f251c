"""The proxy's settings: one pydantic-settings model, every field a flag and an env var.

Precedence: command-line flag > ``PODIAM_PROXY_<FIELD>`` environment variable >
default. The flags are generated from the model's fields (``node_name`` →
``--node-name``), so the two can never drift apart.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import pydantic_settings

from metadata_proxy import wire

ENV_PREFIX = "PODIAM_PROXY_"

def _parse_duration(value: Any) -> Any:
    # Kiam users write Go durations ("1s", "800ms"); bare numbers are seconds. One parser with the operator's.
    return wire.duration_seconds(value) if isinstance(value, str) else value


Duration = Annotated[float, pydantic.BeforeValidator(_parse_duration), pydantic.Field(ge=0)]
Port = Annotated[int, pydantic.Field(ge=1, le=65535)]

DEFAULT_ALLOWED_ROUTES = [
    r"/latest/meta-data/placement/availability-zone/?",
    r"/latest/meta-data/placement/region/?",
]


class ProxySettings(pydantic_settings.BaseSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    node_name: str = pydantic.Field(
        default_factory=socket.gethostname,
        description="This node's name, reported to the operator in /v1/status (the chart sets it from spec.nodeName).",
    )
    bind_address: str = pydantic.Field(
        "0.0.0.0", description="Address the listeners bind to (the DaemonSet runs on the host network); the health port's may differ (--health-bind-address)."
    )
    host_ip: ipaddress.IPv4Address | None = pydantic.Field(
        None,
        description="This node's IP (the chart sets it from status.hostIP): the DNAT target of the iptables rule. "
        "Required with --iptables.",
    )
    metadata_port: Port = pydantic.Field(
        8181, description="Port of the pods' metadata API (plain HTTP; the iptables rule sends 169.254.169.254:80 here). "
        "Kiam agent: --port."
    )
    control_port: Port = pydantic.Field(8182, description="Port of the operator's pushes (mutual TLS only).")
    health_port: Port = pydantic.Field(8183, description="Port of /healthz, /readyz and /metrics (plain HTTP).")
    health_bind_address: str | None = pydantic.Field(
        None,
        description="Address of the health port alone (default: --bind-address). What it tells is a status word and "
        "counts, for anyone; 127.0.0.1 takes it off the pod network for a scraper on the node itself (the kubelet "
        "probes from the node, where that loopback is its own), and Prometheus then cannot reach /metrics.",
    )

    tls_cert: Path | None = pydantic.Field(
        None, description="This proxy's server certificate (PEM), e.g. server.pem or tls.crt. Kiam agent: --cert."
    )
    tls_key: Path | None = pydantic.Field(None, description="Its private key (PEM), e.g. server-key.pem or tls.key. Kiam: --key.")
    tls_ca: Path | None = pydantic.Field(
        None, description="CA bundle that signed the operator's client certificate, e.g. ca.pem or ca.crt. Kiam: --ca."
    )
    operator_identity: str = pydantic.Field(
        wire.OPERATOR_IDENTITY,
        description="Pushes are accepted only from a client certificate with this CN or DNS SAN.",
    )
    tls_reload_interval: Duration = pydantic.Field(
        5.0, description="How often the certificate, key and CA files are checked for changes (rotated Secrets are "
        "picked up without a restart)."
    )

    credential_wait: Duration = pydantic.Field(
        0.8,
        description="How long a request waits for a pod's entry or credentials still on their way from the operator, "
        "instead of failing at once. Kiam: gatewayTimeoutCreation. Keep it under 1s: botocore, the AWS CLI and the "
        "JavaScript SDK give the metadata service 1s and a single attempt.",
    )
    expiry_margin: Duration = pydantic.Field(
        300.0, description="Credentials expiring within this margin are never served (nor accepted from the operator)."
    )
    require_imdsv2: bool = pydantic.Field(
        False, description="Refuse requests without an IMDSv2 session token (401), like HttpTokens=required on EC2."
    )
    disable_imdsv2: bool = pydantic.Field(
        False,
        description="Answer token requests with 404, as proxies without IMDSv2 support do; SDKs then fall back to "
        "IMDSv1. For compatibility testing only.",
    )

    pod_ips_socket: Path | None = pydantic.Field(
        None,
        description="Unix socket of the pod-IP reader (podiam-proxy --serve-pod-ips, in a second container of the "
        "proxy's pod). A request from an IP the operator has not pushed yet is then matched with the pod the node's "
        "container runtime gave that IP, and served if the operator announced that pod (uid, namespace, name) as "
        "starting on this node with a role: the kubelet reports a pod's IP a second or more after its containers "
        "start on a busy node, and SDKs that ask at once give up after 1s. Unset: starting pods wait for the operator.",
    )
    cni_results_dir: Path = pydantic.Field(
        Path("/var/lib/cni/results"),
        description="With --serve-pod-ips: the CNI result cache of the node's container runtime (libcni's, which "
        "containerd and CRI-O write for every CNI plugin), mounted read-only.",
    )
    cni_networks: str = pydantic.Field(
        ".*",
        description="With --serve-pod-ips: regex (matched against the whole name) of the CNI networks whose results "
        "count, e.g. the primary network when Multus adds others.",
    )

    upstream: pydantic.AnyHttpUrl = pydantic.Field(
        pydantic.AnyHttpUrl("http://169.254.169.254"),
        description="The node's real metadata service, for the allowed routes (the proxy fetches its own IMDSv2 token).",
    )
    upstream_timeout: Duration = pydantic.Field(2.0, description="Timeout of each request to the real metadata service.")
    allow_route: list[str] = pydantic.Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_ROUTES),
        description="Regex (matched against the whole path) of metadata paths proxied to the real metadata service; "
        "repeat the flag for several; giving any replaces the defaults (availability zone and region). Everything "
        "else outside iam/ is 404: pods never see node credentials, user-data or identity documents. Kiam: "
        "--whitelist-route-regexp. Env: a JSON list.",
    )

    upstream_cache_ttl: Duration = pydantic.Field(
        2.0,
        description="How long an answer of the real metadata service (200 or 404) is reused for the same path; requests "
        "for a path already on its way wait for that answer. 0: ask every time (one request per path at a time still).",
    )
    upstream_rate: float = pydantic.Field(
        10.0, gt=0, description="Requests a second the proxy sends the real metadata service at most, on average (a "
        "token bucket; EC2's own limit is 1024 packets a second per interface). Over it a pod gets the path's last "
        "answer, or 429 when there is none.",
    )
    upstream_burst: int = pydantic.Field(20, ge=1, description="Requests to the real metadata service at once, above --upstream-rate.")

    open_files: int = pydantic.Field(
        8192, ge=512,
        description="The descriptor limit (soft RLIMIT_NOFILE) the proxy sets itself at start, or the hard limit the "
        "container runtime gives if lower (a pod spec has no field for it). The control port gets 128 connections, the "
        "health port 64, the process 80 descriptors, the pods' ports the rest: a quarter of it the container-credentials "
        "port (when on), the metadata port the remainder (--max-connections).",
    )
    max_connections_per_source: int = pydantic.Field(
        128, ge=1, description="Metadata and container-credentials ports: connections one source IP (one pod) may hold "
        "open on each; more are reset at once.",
    )
    max_connections: int = pydantic.Field(
        0, ge=0,
        description="Metadata port: connections open at once in all; 0: what --open-files leaves it. With all in use, the "
        "oldest that has not sent a complete request yet is closed for the newcomer (none: the newcomer is reset).",
    )
    read_timeout: Duration = pydantic.Field(
        5.0,
        description="A new connection (any port) must send a complete request head within this (on the control port "
        "the TLS handshake included), and a request's unread body is waited for no longer; else it is reset.",
    )
    idle_timeout: Duration = pydantic.Field(
        5.0,
        description="Metadata and health ports: a kept-alive connection is closed when its next request head is not "
        "complete within this of the previous answer. (The operator's connections keep aiohttp's own.)",
    )
    log_summary_interval: Duration = pydantic.Field(
        10.0,
        description="Logs per source: the first line of a kind (a malformed request, a request from an IP with no "
        "credentials, a refused connection...) is written, the next ones only counted, and once per interval "
        "'N more like this from IP in the last T s'.",
    )

    iptables: bool = pydantic.Field(
        False,
        description="Install the DNAT rule sending pods' 169.254.169.254:80 to --host-ip:--metadata-port, in the nat "
        "chain PODIAM-PROXY (idempotent). The rule is deliberately kept on exit, so that a restarting proxy never "
        "lets pods reach the node's own credentials; remove it on uninstall with --remove-iptables-rules. Kiam: --iptables.",
    )
    host_interface: str = pydantic.Field(
        "cali+",
        description="Interfaces the rule matches (iptables -i syntax: a trailing + is a prefix, a leading ! negates): "
        "the interface the node routes pod IPs through. cali+ (Calico), eni+ (AWS VPC CNI), lxc+ (Cilium with "
        "endpoint routes), cni0 (bridge plugin, flannel), cbr0 (kubenet), weave (Weave Net), or '!eth0' (everything "
        "but the node's own interface). Kiam: --host-interface.",
    )
    interception_check: bool = pydantic.Field(
        True,
        description="With --iptables: check that the node routes every pushed pod's IP through an interface "
        "--host-interface matches; otherwise /readyz fails naming the pods, their interfaces and a pattern that fits. "
        "Turn off only for a CNI whose routes do not name the interface pods' packets arrive on (e.g. Cilium without "
        "endpoint routes, where pod routes point at cilium_host).",
    )
    interception_check_interval: Duration = pydantic.Field(
        2.0, description="Seconds between two checks of the pods' routes (a miss counts when two checks in a row see it)."
    )

    container_credentials: bool = pydantic.Field(
        True,
        description="Serve EKS Pod Identity's container-credentials endpoint (GET /v1/credentials, a pod's projected "
        "ServiceAccount token in the Authorization header) on --container-credentials-port; with --iptables, "
        "169.254.170.23:80 from pods and from the host network (and [fd00:ec2::23]:80 where the node has a global IPv6 "
        "address) is sent there. hostNetwork pods are served on this path only.",
    )
    container_credentials_port: Port = pydantic.Field(
        8186, description="Port of the container-credentials endpoint (plain HTTP; the iptables rules send 169.254.170.23:80 here)."
    )
    container_credentials_audience: str = pydantic.Field(
        "pods.eks.amazonaws.com", min_length=1,
        description="The audience a token must carry (the projected volume's audience; EKS Pod Identity's by default).",
    )
    token_leeway: Duration = pydantic.Field(
        30.0, le=300, description="Clock skew allowed when checking a token's exp and nbf."
    )
    service_account_key_overlap: Duration = pydantic.Field(
        300.0,
        description="How long a service-account key the operator stops pushing (the API server's key rotation) is still "
        "accepted, so that tokens signed with it do not fail while every view converges. 0: at once.",
    )

    log_level: Literal["debug", "info", "warning", "error"] = pydantic.Field("info", description="Log level.")
    log_format: Literal["json", "plain"] = pydantic.Field(
        "json", description="json: one object per line; plain: for humans (text: the same, its former name)."
    )

    @pydantic.field_validator("log_format", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        # "plain", as the operator and the README say; "text" was this flag's first name and stays accepted.
        return "plain" if value == "text" else value

    @pydantic.field_validator("bind_address", "health_bind_address")
    @classmethod
    def _an_ip(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.ip_address(value))

    @pydantic.field_validator("cni_networks")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"invalid regex {value!r}: {error}") from None
        return value

    @pydantic.field_validator("allow_route")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"invalid regex {pattern!r}: {error}") from None
        return value

    @pydantic.field_validator("host_interface")
    @classmethod
    def _interface(cls, value: str) -> str:
        if not re.fullmatch(r"!?[A-Za-z0-9_.@:-]{1,15}\+?", value):
            raise ValueError(f"not an interface pattern: {value!r} (e.g. cali+, eni+, !eth0)")
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> ProxySettings:
        if self.require_imdsv2 and self.disable_imdsv2:
            raise ValueError("--require-imdsv2 and --disable-imdsv2 exclude each other")
        if self.iptables and self.host_ip is None:
            raise ValueError("--iptables needs --host-ip (the node's IP, the rule's DNAT target)")
        for name in ("interception_check_interval", "read_timeout", "idle_timeout", "log_summary_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{_flag(name)} must be more than 0 seconds")
        if len({self.metadata_port, self.control_port, self.health_port}) != 3:
            raise ValueError("--metadata-port, --control-port and --health-port must differ")
        if self.container_credentials and self.container_credentials_port in (self.metadata_port, self.control_port, self.health_port):
            raise ValueError("--container-credentials-port must differ from --metadata-port, --control-port and --health-port")
        return self

    def require_tls(self) -> tuple[Path, Path, Path]:
        missing = [f"--{name.replace('_', '-')}" for name in ("tls_cert", "tls_key", "tls_ca") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} required: the control port accepts mutual TLS only")
        assert self.tls_cert and self.tls_key and self.tls_ca
        return self.tls_cert, self.tls_key, self.tls_ca


DESCRIPTION = """\
podiam's metadata proxy: the per-node agent (Kiam's "agent") answering pods'
EC2 instance-metadata requests (169.254.169.254) with the credentials of
their own IAM role, which the podiam operator pushes to it over mutual TLS.
It needs no Kubernetes API access.

Listeners: --metadata-port (pods, plain HTTP), --control-port (operator
pushes, mutual TLS), --health-port (/healthz, /readyz, /metrics),
--container-credentials-port (pods with their ServiceAccount token, plain HTTP).
Every flag is also an environment variable PODIAM_PROXY_<FLAG> (upper case,
dashes as underscores), e.g. --credential-wait=1s is
PODIAM_PROXY_CREDENTIAL_WAIT=1s. Flags win over the environment.
"""

EPILOG = """\
Kiam agent equivalents: --host-interface, --iptables, --port
(--metadata-port), --cert/--key/--ca (--tls-cert/--tls-key/--tls-ca),
--whitelist-route-regexp (--allow-route), gatewayTimeoutCreation
(--credential-wait).

Uninstall: the iptables rule is kept when the proxy exits (so pods never
reach the node's own credentials while it restarts). Remove it with
  podiam-proxy --remove-iptables-rules
(e.g. from a Helm pre-delete hook or by hand on the node).
"""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podiam-proxy", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS,
    )
    for name, field in ProxySettings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        if field.default_factory is not None:
            default: Any = "hostname" if name == "node_name" else field.default_factory()  # type: ignore[call-arg]
        else:
            default = field.default
        help_text = f"{field.description} [env {env}; default: {default}]"
        if field.annotation is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, help=help_text)
        elif name == "allow_route":
            parser.add_argument(_flag(name), action="append", metavar="REGEX", help=help_text)
        else:
            parser.add_argument(_flag(name), metavar=name.upper(), help=help_text)
    parser.add_argument(
        "--remove-iptables-rules", action="store_true", default=False,
        help="Remove the PODIAM-PROXY chain and its jumps from nat PREROUTING and OUTPUT (iptables and ip6tables), then "
        "exit (uninstall).",
    )
    parser.add_argument(
        "--serve-pod-ips", action="store_true", default=False,
        help="Be the pod-IP reader instead of the proxy: answer on --pod-ips-socket which pods the node gave an IP to, "
        "from --cni-results-dir (root's alone: run it as its own container, user 0, no capabilities).",
    )
    return parser


def parse(argv: list[str] | None = None) -> tuple[ProxySettings, argparse.Namespace]:
    """Settings from flags over the environment; exits with a usage error naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {name: value for name, value in vars(args).items() if name in ProxySettings.model_fields}
    try:
        settings = ProxySettings(**given)
    except pydantic.ValidationError as error:
        problems = []
        for item in error.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in item["loc"])
            flag = _flag(where.split(".")[0]) if where else "settings"
            problems.append(f"{flag}: {item['msg']}")
        parser.error("; ".join(problems))
    return settings, args
