"""What the injection webhook adds to a pod: EKS Pod Identity's two variables and the projected token.

Pure: a pod's spec in, the fields to replace out (None: nothing to change).
Every container (and init container) gets ``AWS_CONTAINER_CREDENTIALS_FULL_URI``
and ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` and a read-only mount of the
token, unless it already names either variable (the user chose, and a
container is never half-changed); the pod gets the projected token volume
(the pod's ServiceAccount, the proxies' audience, renewed by the kubelet)
unless it has one of that name. Applying it twice changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

FULL_URI = "http://169.254.170.23/v1/credentials"
TOKEN_DIR = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
TOKEN_FILE = "eks-pod-identity-token"
VOLUME = "eks-pod-identity-token"
URI_VARIABLE = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
TOKEN_VARIABLE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
# The opt-in: this label, "enabled", on a namespace (every pod created there) or on a pod; "disabled" on a pod opts it out.
# The MutatingWebhookConfiguration's selectors decide which pods the API server sends; the label is checked again here.
LABEL = "podiam.io/container-credentials"
DISABLED = "disabled"
# The kopf handler's id: the webhook's URL path is /container-credentials.
WEBHOOK_ID = "container-credentials"


def _container(container: Mapping[str, Any]) -> dict[str, Any] | None:
    env = list(container.get("env") or [])
    if any(item.get("name") in (URI_VARIABLE, TOKEN_VARIABLE) for item in env):
        return None  # set by the user: theirs, untouched
    changed = dict(container)
    changed["env"] = [*env, {"name": URI_VARIABLE, "value": FULL_URI}, {"name": TOKEN_VARIABLE, "value": f"{TOKEN_DIR}/{TOKEN_FILE}"}]
    mounts = list(container.get("volumeMounts") or [])
    if not any(m.get("name") == VOLUME or m.get("mountPath") == TOKEN_DIR for m in mounts):
        changed["volumeMounts"] = [*mounts, {"name": VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]
    return changed


def patch(labels: Mapping[str, str], spec: Mapping[str, Any], *, audience: str, expiration: int) -> dict[str, Any] | None:
    """The spec fields to set (``containers``, ``initContainers``, ``volumes``), or None when there is nothing to add."""
    if labels.get(LABEL) == DISABLED:
        return None
    fields: dict[str, Any] = {}
    for kind in ("containers", "initContainers"):
        containers = list(spec.get(kind) or [])
        changed = [_container(c) for c in containers]
        if any(c is not None for c in changed):
            fields[kind] = [new if new is not None else old for old, new in zip(containers, changed)]
    if not fields:
        return None
    volumes = list(spec.get("volumes") or [])
    if not any(v.get("name") == VOLUME for v in volumes):
        token = {"audience": audience, "expirationSeconds": expiration, "path": TOKEN_FILE}
        fields["volumes"] = [*volumes, {"name": VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}]
    return copy.deepcopy(fields)


def for_pod(pod: Mapping[str, Any], *, audience: str, expiration: int) -> dict[str, Any] | None:
    """:func:`patch` for a pod as the API server sends it for admission."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return patch(labels, pod.get("spec") or {}, audience=audience, expiration=expiration)
