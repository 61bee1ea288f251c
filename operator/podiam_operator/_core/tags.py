"""Session tags: the ones podiam sets, and the ones a PodRoleBinding may add.

The operator sets EKS Pod Identity's tags, so that ABAC policies written for
it work unchanged: per-pod sessions carry the pod's namespace, name, uid and
ServiceAccount, and every session carries the cluster's name when one is
configured. A binding (tenant input) may add tags of its own, never one of
these keys: a tenant could otherwise pass for another namespace or pod in a
policy that trusts them. STS compares tag keys case-insensitively, and so
does the check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from podiam_operator._core.reasons import Reason

NAMESPACE = "kubernetes-namespace"
POD_NAME = "kubernetes-pod-name"
POD_UID = "kubernetes-pod-uid"
SERVICE_ACCOUNT = "kubernetes-service-account"
CLUSTER_NAME = "eks-cluster-name"
# Pod Identity's sixth tag: podiam does not set it, and no binding may pretend to.
CLUSTER_ARN = "eks-cluster-arn"
RESERVED = frozenset({NAMESPACE, POD_NAME, POD_UID, SERVICE_ACCOUNT, CLUSTER_NAME, CLUSTER_ARN})
# STS takes 50 session tags; the operator's own are at most 5 of them.
MAX_EXTRA = 40
# STS's characters for tag keys and values: letters, digits, spaces and _.:/=+-@.
KEY = re.compile(r"[\w .:/=+@-]{1,128}")
VALUE = re.compile(r"[\w .:/=+@-]{0,256}")


class TagError(ValueError):
    """A binding's spec.sessionTags cannot be used; ``reason`` for the status."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def binding_tags(raw: Any) -> tuple[tuple[str, str], ...]:
    """A binding's ``spec.sessionTags`` as sorted pairs; TagError says what is wrong."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise TagError(Reason.INVALID_SESSION_TAGS, "spec.sessionTags must map tag keys to string values")
    if len(raw) > MAX_EXTRA:
        raise TagError(Reason.INVALID_SESSION_TAGS, f"spec.sessionTags has {len(raw)} tags (at most {MAX_EXTRA})")
    seen: dict[str, str] = {}
    for key, value in raw.items():
        folded = key.lower()
        if folded in RESERVED:
            raise TagError(Reason.RESERVED_SESSION_TAG, f"spec.sessionTags: {key!r} is set by the operator and no binding may set it "
                                                 f"(reserved, in any case: {', '.join(sorted(RESERVED))})")
        if folded.startswith("aws:"):
            raise TagError(Reason.RESERVED_SESSION_TAG, f"spec.sessionTags: {key!r}: keys starting with 'aws:' are AWS's own")
        if not KEY.fullmatch(key):
            raise TagError(Reason.INVALID_SESSION_TAGS, f"spec.sessionTags: key {key[:140]!r} must be 1-128 letters, digits, spaces "
                                                 "and _.:/=+-@")
        if not VALUE.fullmatch(value):
            raise TagError(Reason.INVALID_SESSION_TAGS, f"spec.sessionTags[{key!r}]: the value must be at most 256 letters, digits, "
                                                 "spaces and _.:/=+-@")
        if folded in seen:
            raise TagError(Reason.INVALID_SESSION_TAGS, f"spec.sessionTags: {seen[folded]!r} and {key!r} are the same key to STS "
                                                 "(tag keys are case-insensitive)")
        seen[folded] = key
    return tuple(sorted((str(k), str(v)) for k, v in raw.items()))


def for_session(
    *,
    namespace: str,
    pod_name: str,
    pod_uid: str,
    service_account: str,
    per_pod: bool,
    cluster_name: str | None,
    extra: tuple[tuple[str, str], ...] = (),
    disabled: bool = False,
) -> tuple[tuple[str, str], ...]:
    """The tags of one session: the pod's (per-pod sessions only), the cluster's name, then the binding's."""
    if disabled:
        return ()
    found: list[tuple[str, str]] = []
    if per_pod:
        found += [(NAMESPACE, namespace), (POD_NAME, pod_name), (POD_UID, pod_uid), (SERVICE_ACCOUNT, service_account)]
    if cluster_name:
        found.append((CLUSTER_NAME, cluster_name))
    return (*found, *extra)
