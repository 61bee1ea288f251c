"""What the operator needs to know of Kubernetes objects, extracted from their bodies.

Small frozen records: kopf's indexes and the world model keep these instead
of whole bodies (5,000 pods must fit in a small operator).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from podiam_operator._core import policy

# Pod annotations (the role's and the external id's keys are kube2iam's --iam-role-key and --iam-external-id).
ROLE_ANNOTATION = "iam.amazonaws.com/role"
EXTERNAL_ID_ANNOTATION = "iam.amazonaws.com/external-id"
SESSION_NAME_ANNOTATION = "iam.amazonaws.com/session-name"
# A namespace's default role: for its pods that name none (set by whoever may annotate the namespace).
DEFAULT_ROLE_ANNOTATION = "podiam.io/default-role"
# IRSA's ServiceAccount annotation: honoured when the operator runs with --irsa-service-accounts.
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
# Set by the kubelet on the API's copy of a static pod (a "mirror pod"): made by a node, not by a user.
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
POD_LABEL = "podiam.io/pod"  # on pod-owned bindings: the owner pod's name

GROUP = "podiam.io"
VERSION = "v1alpha1"
PLURAL = "podrolebindings"
KIND = "PodRoleBinding"
API_VERSION = f"{GROUP}/{VERSION}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    """An annotation's value, stripped; None when absent, empty or not a string."""
    return (value.strip() or None) if isinstance(value, str) else None


@dataclasses.dataclass(frozen=True)
class Reader:
    """Which annotations say what: the operator's settings (kube2iam's flags), defaults as Kiam and kube2iam."""

    role_key: str = ROLE_ANNOTATION
    external_id_key: str = EXTERNAL_ID_ANNOTATION
    rules: policy.Rules = policy.Rules()


DEFAULT_READER = Reader()


@dataclasses.dataclass(frozen=True, slots=True)
class PodFacts:
    namespace: str
    name: str
    uid: str
    node: str | None
    ip: str | None
    phase: str
    deleting: bool
    host_network: bool
    mirror: bool
    service_account: str
    labels: tuple[tuple[str, str], ...]
    role: str | None
    external_id: str | None
    session_name: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def finished(self) -> bool:
        """Terminating or done: its credentials are revoked before its IP can be reused."""
        return self.deleting or self.phase in ("Succeeded", "Failed")

    @property
    def alive(self) -> bool:
        return not self.finished


def pod_facts(body: Mapping[str, Any], reader: Reader = DEFAULT_READER) -> PodFacts:
    meta, spec, status = _mapping(body.get("metadata")), _mapping(body.get("spec")), _mapping(body.get("status"))
    annotations = _mapping(meta.get("annotations"))
    return PodFacts(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        node=spec.get("nodeName") or None,
        ip=status.get("podIP") or None,
        phase=str(status.get("phase") or "Pending"),
        deleting=meta.get("deletionTimestamp") is not None,
        host_network=bool(spec.get("hostNetwork")),
        mirror=MIRROR_ANNOTATION in annotations,
        service_account=str(spec.get("serviceAccountName") or "default"),
        labels=tuple(sorted((str(k), str(v)) for k, v in _mapping(meta.get("labels")).items())),
        role=_text(annotations.get(reader.role_key)),
        external_id=annotations.get(reader.external_id_key) or None,
        # No session name is longer than 64 characters: the rest of an annotation (up to 256 KiB) is never kept.
        session_name=str(annotations.get(SESSION_NAME_ANNOTATION) or "")[:64] or None,
    )


def namespace_policy(body: Mapping[str, Any], reader: Reader = DEFAULT_READER) -> policy.NamespacePolicy:
    meta = _mapping(body.get("metadata"))
    annotations = _mapping(meta.get("annotations"))
    permitted = annotations.get(policy.PERMITTED_ANNOTATION)
    allowed = annotations.get(reader.rules.allowed_roles_key)
    return policy.NamespacePolicy(
        namespace=str(meta.get("name", "")),
        permitted=permitted if isinstance(permitted, str) else None,
        allowed_roles=allowed if isinstance(allowed, str) else None,
        default_role=_text(annotations.get(DEFAULT_ROLE_ANNOTATION)),
        rules=reader.rules,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAccountFacts:
    namespace: str
    name: str
    uid: str
    role: str | None  # its IRSA annotation, eks.amazonaws.com/role-arn

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def service_account_facts(body: Mapping[str, Any]) -> ServiceAccountFacts:
    meta = _mapping(body.get("metadata"))
    return ServiceAccountFacts(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        role=_text(_mapping(meta.get("annotations")).get(IRSA_ANNOTATION)),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class BindingFacts:
    namespace: str
    name: str
    uid: str
    generation: int
    role: str | None
    pod_selector: Any  # raw; None when absent (pod-owned bindings have none)
    service_account: str | None  # spec.serviceAccountName: only pods running as it
    external_id: str | None
    session_duration: int | None
    intermediate_role: str | None  # spec.intermediateRole: assumed first, and the role with its credentials
    session_tags: Any  # raw spec.sessionTags; None when absent
    disable_session_tags: bool
    owner_pod_uid: str | None  # set on the bindings the operator made for annotated pods
    deleting: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def pod_owned(self) -> bool:
        return self.owner_pod_uid is not None


def binding_facts(body: Mapping[str, Any]) -> BindingFacts:
    meta, spec = _mapping(body.get("metadata")), _mapping(body.get("spec"))
    owner_uid = None
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("kind") == "Pod" and ref.get("apiVersion") == "v1" and ref.get("controller"):
            owner_uid = str(ref.get("uid"))
    duration = spec.get("sessionDuration")
    role = spec.get("role")
    external_id = spec.get("externalId")
    service_account = spec.get("serviceAccountName")
    return BindingFacts(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        role=role if isinstance(role, str) else None,
        pod_selector=spec.get("podSelector"),
        service_account=service_account if isinstance(service_account, str) and service_account else None,
        external_id=external_id if isinstance(external_id, str) and external_id else None,
        session_duration=duration if isinstance(duration, int) and not isinstance(duration, bool) else None,
        intermediate_role=_text(spec.get("intermediateRole")),
        session_tags=spec.get("sessionTags"),
        disable_session_tags=spec.get("disableSessionTags") is True,
        owner_pod_uid=owner_uid,
        deleting=meta.get("deletionTimestamp") is not None,
    )


@dataclasses.dataclass(frozen=True)
class ProxyFacts:
    """A node's metadata proxy, from its pod."""

    node: str
    pod_name: str
    pod_uid: str
    host_ip: str | None
    running: bool
    ready: bool
    restarts: int  # container restarts: a restarted proxy holds nothing until its next snapshot

    @property
    def reachable(self) -> bool:
        # Not "ready": a proxy reports ready only after its first snapshot,
        # which only the operator can give it.
        return self.running and self.host_ip is not None


def proxy_facts(body: Mapping[str, Any]) -> ProxyFacts | None:
    meta, spec, status = _mapping(body.get("metadata")), _mapping(body.get("spec")), _mapping(body.get("status"))
    node = spec.get("nodeName")
    if not node or meta.get("deletionTimestamp") is not None:
        return None
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or [] if isinstance(c, Mapping)}
    restarts = sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or [] if isinstance(c, Mapping))
    return ProxyFacts(
        node=str(node),
        pod_name=str(meta.get("name", "")),
        pod_uid=str(meta.get("uid", "")),
        host_ip=status.get("hostIP") or None,
        running=status.get("phase") == "Running",
        ready=conditions.get("Ready") == "True",
        restarts=restarts,
    )


def node_has_taint(body: Mapping[str, Any], key: str) -> bool:
    taints = _mapping(body.get("spec")).get("taints") or []
    return any(isinstance(t, Mapping) and t.get("key") == key for t in taints)
