"""Every reason the operator gives: in a binding's status (its Ready condition), in Events, in decisions.

One enumeration, and the groups below built from it, so that what clears a
refusal's Event, what ``kubectl podiam why`` recognises as the operator's
and what the README lists cannot drift apart. A binding whose role STS
refuses carries STS's own error code as its reason (``AccessDenied``...):
those are AWS's words, not listed here.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # Why a pod gets no role: Events on the pod (and on the ServiceAccount that named it), its binding's status.
    HOST_NETWORK = "HostNetwork"
    MIRROR_POD = "MirrorPod"
    NAMESPACE_NOT_PERMITTED = "NamespaceNotPermitted"
    ROLE_NOT_PERMITTED = "RoleNotPermitted"
    INVALID_PERMITTED_REGEX = "InvalidPermittedRegex"
    INVALID_ALLOWED_ROLES = "InvalidAllowedRoles"
    ACCOUNT_NOT_KNOWN = "AccountNotKnown"
    CONFLICTING_BINDINGS = "ConflictingBindings"
    INVALID_ROLE = "InvalidRole"
    INVALID_EXTERNAL_ID = "InvalidExternalId"
    # A binding's spec that cannot be used (phase Error).
    INVALID_SPEC = "InvalidSpec"
    INVALID_SESSION_TAGS = "InvalidSessionTags"
    RESERVED_SESSION_TAG = "ReservedSessionTag"
    # A binding on its way (phase Pending), served (Bound), or whose pods' IPs are contested (Conflict).
    NO_PODS = "NoPods"
    ASSUMING_ROLE = "AssumingRole"
    STS_BUDGET = "StsBudget"
    CREDENTIALS_ISSUED = "CredentialsIssued"
    IP_CONFLICT = "IPConflict"
    # Events on pods only.
    ASSUME_ROLE_FAILED = "AssumeRoleFailed"
    SESSION_NAME_IGNORED = "SessionNameIgnored"
    CONTAINER_CREDENTIALS_ONLY = "ContainerCredentialsOnly"
    BINDING_NAME_TAKEN = "BindingNameTaken"
    # Decisions that grant (``kubectl podiam why`` shows them; never a status or an Event).
    GRANTED = "Granted"
    PERMITTED = "Permitted"


# Why a pod gets no role (a decision denied, in conflict or in error): an Event on the pod each, which is
# news again once the pod has been granted its role in between.
POD_REFUSALS = frozenset({
    Reason.HOST_NETWORK, Reason.MIRROR_POD, Reason.NAMESPACE_NOT_PERMITTED, Reason.ROLE_NOT_PERMITTED,
    Reason.INVALID_PERMITTED_REGEX, Reason.INVALID_ALLOWED_ROLES, Reason.ACCOUNT_NOT_KNOWN, Reason.CONFLICTING_BINDINGS,
    Reason.INVALID_ROLE, Reason.INVALID_EXTERNAL_ID,
})

# Phase Error for what was written (a role, an external id, a spec), not for what STS answered.
WRITTEN_ERRORS = frozenset({
    Reason.INVALID_ROLE, Reason.INVALID_EXTERNAL_ID, Reason.INVALID_SPEC, Reason.INVALID_SESSION_TAGS,
    Reason.RESERVED_SESSION_TAG,
})

# Every reason of the Events the operator posts on pods.
POD_EVENTS = POD_REFUSALS | {
    Reason.IP_CONFLICT, Reason.ASSUME_ROLE_FAILED, Reason.SESSION_NAME_IGNORED, Reason.CONTAINER_CREDENTIALS_ONLY,
    Reason.BINDING_NAME_TAKEN,
}
