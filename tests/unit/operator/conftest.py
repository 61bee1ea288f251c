"""Unit tests of the operator's pure core and its STS cache (fake source, fake clock)."""

from __future__ import annotations

import uuid
from typing import Any

from podiam_operator._core import facts

BASE_ARN = "arn:aws:iam::123456789012:role/"


def pod_body(
    name: str = "app",
    namespace: str = "team",
    *,
    role: str | None = "MyRole",
    labels: dict[str, str] | None = None,
    node: str | None = "node-1",
    ip: str | None = "10.0.0.1",
    phase: str = "Running",
    uid: str | None = None,
    host_network: bool = False,
    deleting: bool = False,
    external_id: str | None = None,
    session_name: str | None = None,
    service_account: str = "sa",
    mirror: bool = False,
) -> dict[str, Any]:
    annotations = {}
    if role is not None:
        annotations[facts.ROLE_ANNOTATION] = role
    if external_id is not None:
        annotations[facts.EXTERNAL_ID_ANNOTATION] = external_id
    if session_name is not None:
        annotations[facts.SESSION_NAME_ANNOTATION] = session_name
    if mirror:
        annotations[facts.MIRROR_ANNOTATION] = "f00d"
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()), "annotations": annotations, "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    spec: dict[str, Any] = {"hostNetwork": host_network, "serviceAccountName": service_account}
    if node:
        spec["nodeName"] = node
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def pod(**kwargs: Any) -> facts.PodFacts:
    return facts.pod_facts(pod_body(**kwargs))


def namespace(name: str = "team", permitted: str | None = ".*", *, allowed_roles: str | None = None,
              default_role: str | None = None, reader: facts.Reader = facts.DEFAULT_READER) -> Any:
    annotations = {} if permitted is None else {"iam.amazonaws.com/permitted": permitted}
    if allowed_roles is not None:
        annotations[reader.rules.allowed_roles_key] = allowed_roles
    if default_role is not None:
        annotations[facts.DEFAULT_ROLE_ANNOTATION] = default_role
    return facts.namespace_policy({"metadata": {"name": name, "annotations": annotations}}, reader)


def service_account(name: str = "sa", namespace: str = "team", role: str | None = "SaRole") -> facts.ServiceAccountFacts:
    annotations = {} if role is None else {facts.IRSA_ANNOTATION: role}
    return facts.service_account_facts({"metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                                                      "annotations": annotations}})


def binding(
    name: str = "b",
    namespace: str = "team",
    *,
    role: str | None = "MyRole",
    selector: Any = None,
    owner: facts.PodFacts | None = None,
    external_id: str | None = None,
    duration: int | None = None,
    generation: int = 1,
    service_account: str | None = None,
    intermediate: str | None = None,
    tags: Any = None,
    tags_off: bool = False,
) -> facts.BindingFacts:
    spec: dict[str, Any] = {}
    if role is not None:
        spec["role"] = role
    if selector is not None:
        spec["podSelector"] = selector
    if service_account is not None:
        spec["serviceAccountName"] = service_account
    if intermediate is not None:
        spec["intermediateRole"] = intermediate
    if tags is not None:
        spec["sessionTags"] = tags
    if tags_off:
        spec["disableSessionTags"] = True
    if external_id:
        spec["externalId"] = external_id
    if duration:
        spec["sessionDuration"] = duration
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "generation": generation}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": owner.name, "uid": owner.uid, "controller": True}]
    return facts.binding_facts({"metadata": meta, "spec": spec})

