"""What the active operator publishes about itself, for ``kubectl podiam``: the ConfigMap ``podiam-status``.

Most of what a user asks ("why has this pod no credentials?") is in API
objects already: binding statuses, Events, node taints, proxy pods. What is
not is the operator's own state: the settings its decisions depend on (the
cluster's default role, IRSA on or off, the annotation keys...), its AWS
account (role names resolve against it), each proxy's last push, and the
credentials it holds per role (expiry, last STS error). The active replica
writes these, and nothing secret, to one ConfigMap in its namespace, key
``status.json``, when they change (at most every few seconds) and as a
heartbeat; a standby writes nothing.

This module is the format, both ways: the operator encodes with it and the
plugin decodes with it, so the plugin runs the operator's own decision code
(:mod:`decide`, :mod:`world`) with the operator's own settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from podiam_operator._core import decide, facts, policy, roles

CONFIGMAP = "podiam-status"
KEY = "status.json"
VERSION = 1
HEARTBEAT_SECONDS = 30.0  # written at least this often by the active replica: older means no active operator


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def encode_decisions(config: decide.Config, reader: facts.Reader, own_namespace: str | None,
                     own_service_account: str | None) -> dict[str, Any]:
    """The settings pod decisions depend on (never credentials)."""
    return {
        "defaultDuration": config.default_duration,
        "sessionName": config.session_name,
        "perPodSessions": config.per_pod,
        "allowMirrorPods": config.allow_mirror_pods,
        "defaultRole": config.default_role,
        "irsaServiceAccounts": config.irsa,
        "clusterName": config.cluster_name,
        "containerCredentials": config.container_credentials,
        "roleAnnotation": reader.role_key,
        "externalIdAnnotation": reader.external_id_key,
        "allowedRolesAnnotation": reader.rules.allowed_roles_key,
        "allowedRolesFormat": reader.rules.allowed_roles_format,
        "strictNamespaceRegexp": reader.rules.strict,
        "operatorNamespace": own_namespace,
        "operatorServiceAccount": own_service_account,
    }


@dataclasses.dataclass(frozen=True)
class Decisions:
    """What :func:`encode_decisions` wrote, back as the operator's own types."""

    config: decide.Config
    reader: facts.Reader
    own_namespace: str | None = None
    own_service_account: str | None = None


def decode_decisions(document: Mapping[str, Any]) -> Decisions:
    data = _mapping(document)
    defaults, rules = decide.Config(), policy.Rules()
    fmt = data.get("allowedRolesFormat")

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and value else None

    def flag(key: str, default: bool) -> bool:
        value = data.get(key)
        return value if isinstance(value, bool) else default

    duration = data.get("defaultDuration")
    config = decide.Config(
        default_duration=duration if isinstance(duration, int) and not isinstance(duration, bool) else defaults.default_duration,
        session_name=text("sessionName") or defaults.session_name,
        per_pod=flag("perPodSessions", defaults.per_pod),
        allow_mirror_pods=flag("allowMirrorPods", defaults.allow_mirror_pods),
        default_role=text("defaultRole"),
        irsa=flag("irsaServiceAccounts", defaults.irsa),
        cluster_name=text("clusterName"),
        # Missing: the operator's own default (--container-credentials is on unless turned off).
        container_credentials=flag("containerCredentials", True),
    )
    reader = facts.Reader(
        role_key=text("roleAnnotation") or facts.ROLE_ANNOTATION,
        external_id_key=text("externalIdAnnotation") or facts.EXTERNAL_ID_ANNOTATION,
        rules=policy.Rules(
            allowed_roles_key=text("allowedRolesAnnotation") or rules.allowed_roles_key,
            allowed_roles_format="regexp" if fmt == "regexp" else "glob",
            strict=flag("strictNamespaceRegexp", rules.strict),
        ),
    )
    return Decisions(config, reader, text("operatorNamespace"), text("operatorServiceAccount"))


def decode_base(value: Any) -> roles.BaseArn | None:
    """The operator's base ARN as published (None: not known yet, or unusable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return roles.BaseArn.parse(value)
    except roles.RoleError:
        return None


_STATE_ORDER = {"failed": 0, "pending": 1, "ok": 2}


def role_summary(states: list[tuple[str, decide.KeyState, int]]) -> dict[str, dict[str, Any]]:
    """Per role ARN, from ``(role ARN, the cache's state of one credential set, pods using it)``.

    Bounded by the number of roles, not of credential sets (per-pod sessions
    make one per pod): the worst state, the earliest expiry, the last error.
    """
    found: dict[str, dict[str, Any]] = {}
    for arn, state, pods in states:
        entry = found.setdefault(arn, {"state": state.state, "credentialSets": 0, "pods": 0, "expiration": None,
                                       "reason": None, "message": None})
        entry["credentialSets"] += 1
        entry["pods"] += pods
        if _STATE_ORDER[state.state] < _STATE_ORDER[entry["state"]]:
            entry["state"] = state.state
        if state.expiration and (entry["expiration"] is None or state.expiration < entry["expiration"]):
            entry["expiration"] = state.expiration
        if state.state != "ok" and state.reason and (entry["reason"] is None or state.state == "failed"):
            entry["reason"], entry["message"] = state.reason, state.message
    return found
