"""The push API's wire models: the contract between the operator and the proxy.

The proxy owns this module; the operator imports it (and nothing else of the
proxy) to build its requests. It depends on pydantic alone, so importing it
pulls in neither aiohttp nor the proxy's server code.

Endpoints on the control port (mutual TLS only), all JSON:

``POST /v1/changes``  body :class:`Changes`  -> :class:`Ack`
    Incremental update, applied in this order: service-account keys, role
    upserts, pod removals, pod upserts, pending removals, pending upserts,
    token-only removals, token-only upserts, role removals. A pod
    entry for an IP is replaced or removed only by a change naming the same
    pod uid; a pod upsert for an IP held by another uid, or naming a role key
    the proxy does not hold, is refused (listed in ``Ack.rejected``) so that
    a stale or reordered push can never hand one pod's credentials to
    another. The operator answers a rejection
    with a full snapshot. An entry with ``node_identity`` names no role key:
    the same uid rules apply to it. Before it holds its picture of the
    cluster, a newly active operator sends only its own replicas'
    ``node_identity`` entries this way (it needs them to reach AWS at all).
    A :class:`PendingPod` is a pod granted a role on this node whose IP the
    API server does not show yet; its pod entry replaces it. A
    :class:`TokenOnlyPod` is a pod granted a role on this node that is served
    on the container-credentials path only (a hostNetwork pod: its IP is the
    node's). ``service_account_keys``, when present, replaces the keys the
    container-credentials path checks tokens with (absent: no news, the
    proxy keeps what it holds).

``PUT /v1/snapshot``  body :class:`Snapshot`  -> :class:`Ack`
    Atomic replacement of everything the proxy holds for its node. The first
    snapshot after start makes the proxy ready.

``GET /v1/status``  -> :class:`ProxyStatus`
    What the proxy holds (counts and snapshot generation, never secrets), for
    the operator's anti-entropy check.

Fields added after the first release (the pending pods, the token-only
pods, the service-account keys) are left out of a body while empty, so that
a proxy or an operator that predates them still reads every body that does
not use them.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import re
from typing import Annotated, Any

import pydantic

API_VERSION = "v1"
CHANGES_PATH = "/v1/changes"
SNAPSHOT_PATH = "/v1/snapshot"
STATUS_PATH = "/v1/status"

# The name the proxies' server certificates carry and the operator verifies
# when it dials a proxy by its host IP; the identity the proxies require of
# the operator's client certificate (its CN or a DNS SAN) by default.
PROXY_SERVER_NAME = "podiam-proxy"
OPERATOR_IDENTITY = "podiam-operator"

# Opaque to the proxy: the operator derives it from (role ARN, external id)
# or, in per-pod session mode, from (role ARN, external id, pod uid).
RoleKey = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
PodIP = Annotated[str, pydantic.AfterValidator(lambda v: str(ipaddress.ip_address(v)))]


def _utc(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    return value.astimezone(datetime.timezone.utc)


UtcDateTime = Annotated[datetime.datetime, pydantic.AfterValidator(_utc)]


# --- formats both components share (the operator may import this module and no other of the proxy) ---


def rfc3339(moment: datetime.datetime) -> str:
    """UTC to the second with a ``Z``, as Kubernetes writes its timestamps (``2026-01-02T03:04:05Z``)."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime.datetime | None:
    """A timestamp as :func:`rfc3339` (or Kubernetes) writes it, timezone-aware; None when it is not one."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_DURATION_PART = re.compile(rf"({_NUMBER.pattern})(ms|s|m|h|d)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_seconds(text: str) -> float:
    """Seconds ("90", "0.8"), or Go-style units, as Kiam's and cert-manager's users write them ("800ms", "5m",
    "2160h", "1h30m"; and "90d"). Raises ValueError for anything else."""
    text = "".join(text.split())  # "800 ms" too
    if _NUMBER.fullmatch(text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use seconds, or e.g. 800ms, 1s, 5m, 1h30m, 90d)")
    return sum(float(number) * _DURATION_UNIT[unit] for number, unit in parts)


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def _newer() -> Any:
    """A list field added after the first release: left out of the JSON while empty (see above)."""
    return pydantic.Field(default_factory=list, exclude_if=lambda items: not items)


class RoleCredentials(_Model):
    """One set of STS credentials, shared by every pod whose entry names its key."""

    key: RoleKey
    role_arn: str = pydantic.Field(min_length=20, max_length=2048)
    # What the pod sees under /latest/meta-data/iam/security-credentials/:
    # the role's name without its path, as on an EC2 instance.
    # The length as a bound, not as {1,64} in the pattern: pydantic-core's Rust regex compiles a counted
    # Unicode class into 64 copies of its tables (6.7 MiB in every process that imports this module).
    role_name: str = pydantic.Field(pattern=r"^[\w+=,.@-]+$", max_length=64)
    access_key_id: str = pydantic.Field(min_length=16, max_length=128)
    secret_access_key: pydantic.SecretStr
    session_token: pydantic.SecretStr
    expiration: UtcDateTime
    last_updated: UtcDateTime

    @pydantic.field_serializer("secret_access_key", "session_token", when_used="json")
    def _reveal_on_the_wire(self, value: pydantic.SecretStr, info: pydantic.SerializationInfo) -> str:
        # Secrets stay masked in repr(), str() and plain dumps (logs); only
        # encode() below, which builds a request body, reveals them.
        if info.context and info.context.get("reveal_secrets"):
            return value.get_secret_value()
        return str(value)


class PodEntry(_Model):
    """Which pod owns a source IP on this node, and which credentials it gets.

    Either ``role_key`` (credentials the operator pushed) or ``node_identity``:
    the pod reads the node's own role, which the proxy fetches from the node's
    metadata service for it. The operator sends ``node_identity`` entries only
    for its own replicas' pods (its namespace and ServiceAccount), so that it
    can reach AWS through its node's proxy like any pod on the pod network.
    """

    ip: PodIP
    uid: str = pydantic.Field(min_length=1, max_length=64)
    namespace: str = pydantic.Field(min_length=1, max_length=63)
    name: str = pydantic.Field(min_length=1, max_length=253)
    role_key: RoleKey | None = None
    node_identity: bool = False

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> PodEntry:
        if self.node_identity == (self.role_key is not None):
            raise ValueError("a pod entry names either a role_key or node_identity: true, not both nor neither")
        return self


class PendingPod(_Model):
    """A pod granted a role on this node, whose IP the API server does not show yet.

    The kubelet reports a pod's IP some time after its containers can send
    packets (over a second on a busy node); until the operator sees it, the
    proxy may recognise the pod by the IP the node's container runtime
    recorded for this uid (``--pod-ips-socket``), and serve it this role.
    """

    uid: str = pydantic.Field(min_length=1, max_length=64)
    namespace: str = pydantic.Field(min_length=1, max_length=63)
    name: str = pydantic.Field(min_length=1, max_length=253)
    role_key: RoleKey


class TokenOnlyPod(_Model):
    """A pod granted a role on this node, served on the container-credentials path only.

    A hostNetwork pod shares the node's IP, so the metadata path (which
    knows pods by source IP) can never serve it; a request carrying the
    pod's ServiceAccount token names it by uid instead.
    """

    uid: str = pydantic.Field(min_length=1, max_length=64)
    namespace: str = pydantic.Field(min_length=1, max_length=63)
    name: str = pydantic.Field(min_length=1, max_length=253)
    role_key: RoleKey


# One JSON Web Key as the API server publishes it at /openid/v1/jwks (kty, kid, alg, use, n/e or crv/x/y; key_ops, x5c).
_JwkText = Annotated[str, pydantic.StringConstraints(max_length=8192)]
Jwk = dict[str, _JwkText | Annotated[list[_JwkText], pydantic.Field(max_length=16)]]


class ServiceAccountKeys(_Model):
    """The API server's service-account token issuer and public signing keys (its JWKS).

    The container-credentials path checks a pod's projected ServiceAccount
    token against these, offline: the proxy has no Kubernetes API access.
    """

    issuer: str = pydantic.Field(min_length=1, max_length=2048)
    keys: list[Jwk] = pydantic.Field(max_length=64)

    def fingerprint(self) -> str:
        """What the proxy reports in its status, so the operator sees whether it holds the same keys."""
        canonical = json.dumps({"issuer": self.issuer, "keys": self.keys}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class PodRemoval(_Model):
    ip: PodIP
    uid: str = pydantic.Field(min_length=1, max_length=64)


class Changes(_Model):
    upsert_roles: list[RoleCredentials] = []
    remove_roles: list[RoleKey] = []
    upsert_pods: list[PodEntry] = []
    remove_pods: list[PodRemoval] = []
    upsert_pending: list[PendingPod] = _newer()
    remove_pending: list[Annotated[str, pydantic.StringConstraints(min_length=1, max_length=64)]] = _newer()  # uids
    upsert_token_only: list[TokenOnlyPod] = _newer()
    remove_token_only: list[Annotated[str, pydantic.StringConstraints(min_length=1, max_length=64)]] = _newer()  # uids
    service_account_keys: ServiceAccountKeys | None = pydantic.Field(default=None, exclude_if=lambda keys: keys is None)


class Snapshot(_Model):
    # Increases with every snapshot the operator sends to this node; the
    # proxy reports the last one it applied in ProxyStatus.
    generation: int = pydantic.Field(ge=0)
    roles: list[RoleCredentials] = []
    pods: list[PodEntry] = []
    pending: list[PendingPod] = _newer()
    token_only: list[TokenOnlyPod] = _newer()
    # Absent: the proxy keeps the keys it holds (a snapshot from an operator that could not read them wipes nothing).
    service_account_keys: ServiceAccountKeys | None = pydantic.Field(default=None, exclude_if=lambda keys: keys is None)


class Rejection(_Model):
    # A refused pod entry names its ip and uid; a refused role upsert (e.g.
    # credentials already inside the proxy's expiry margin) names role_key,
    # with ip and uid empty.
    ip: str
    uid: str
    reason: str
    role_key: str | None = None


class Ack(_Model):
    applied: int
    rejected: list[Rejection] = []


class ProxyStatus(_Model):
    node_name: str
    ready: bool
    snapshot_generation: int | None
    roles: int
    pods: int
    pending: int = pydantic.Field(default=0, exclude_if=lambda count: not count)
    token_only: int = pydantic.Field(default=0, exclude_if=lambda count: not count)
    # ServiceAccountKeys.fingerprint() of the keys held (None: none yet).
    service_account_keys: str | None = pydantic.Field(default=None, exclude_if=lambda value: value is None)


def encode(body: Changes | Snapshot) -> bytes:
    """The request body for a push: the only place secrets are serialised."""
    return body.model_dump_json(context={"reveal_secrets": True}).encode()
