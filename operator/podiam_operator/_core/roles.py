"""Role names and ARNs: parsing, resolution against the account's base ARN, cache keys."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re

PARTITIONS = ("aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f", "aws-eusc")

# IAM: a role name is 1-64 of [\w+=,.@-]; a path is "/" or "/seg/.../" of
# printable ASCII. Path segments written in a pod annotation may not hold ":",
# so that a mistyped ARN is reported as such, not taken for a name.
_NAME = r"[\w+=,.@-]{1,64}"
_ARN_RE = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/(?P<path>(?:[\x21-\x2e\x30-\x7e]+/)*)(?P<name>" + _NAME + r")$",
    re.ASCII,
)
_NAME_RE = re.compile(r"^/?(?P<path>(?:[\x21-\x2e\x30-\x39\x3b-\x7e]+/)*)(?P<name>" + _NAME + r")$", re.ASCII)
_CALLER_ARN_RE = re.compile(r"^arn:(?P<partition>aws[a-z-]*):(?:sts|iam)::(?P<account>\d{12}):", re.ASCII)
_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]", re.ASCII)


class RoleError(ValueError):
    """A role name or ARN that cannot be used; the message says why, for the user."""


@dataclasses.dataclass(frozen=True, slots=True)
class RoleRef:
    arn: str
    path_and_name: str  # "path/to/Role" (no leading slash), as matched by the namespace regex
    name: str  # the last segment: what a pod sees under security-credentials/


def _shown(value: str) -> str:
    """A user's value in a message: quoted, clipped (an annotation may hold 256 KiB)."""
    return repr(value) if len(value) <= 100 else repr(value[:100]) + f"... ({len(value)} characters)"


def parse_role_arn(value: str) -> RoleRef:
    match = _ARN_RE.match(value)
    if match is None:
        raise RoleError(f"{_shown(value)} is not a valid IAM role ARN (arn:<partition>:iam::<12-digit account>:role/[path/]name)")
    if match["partition"] not in PARTITIONS:
        raise RoleError(f"{value!r}: unknown partition {match['partition']!r}")
    return RoleRef(arn=value, path_and_name=match["path"] + match["name"], name=match["name"])


@dataclasses.dataclass(frozen=True)
class BaseArn:
    """``arn:<partition>:iam::<account>:role/``: what role names resolve against."""

    partition: str
    account: str

    @property
    def prefix(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/"

    @classmethod
    def parse(cls, value: str) -> BaseArn:
        match = re.match(r"^arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role(?:/.*)?$", value, re.ASCII)
        if match is None or match["partition"] not in PARTITIONS:
            raise RoleError(f"{value!r} is not a base role ARN like arn:aws:iam::123456789012:role/")
        return cls(match["partition"], match["account"])

    @classmethod
    def from_caller_identity(cls, arn: str, account: str | None = None) -> BaseArn:
        """From GetCallerIdentity's Arn (a user, a role or an assumed-role session): partition-aware."""
        match = _CALLER_ARN_RE.match(arn)
        if match is None or match["partition"] not in PARTITIONS:
            raise RoleError(f"cannot derive the account from caller identity {arn!r}")
        return cls(match["partition"], account or match["account"])


def resolve(value: str, base: BaseArn | None) -> RoleRef:
    """A pod annotation's or binding's role (name, path/name or ARN) as a role ARN."""
    value = value.strip()
    if value.startswith("arn:"):
        return parse_role_arn(value)
    match = _NAME_RE.match(value)
    if match is None:
        raise RoleError(
            f"{_shown(value)} is not a role name (letters, digits and +=,.@_- up to 64, optionally after a path like team/) nor a role ARN"
        )
    if base is None:
        raise RoleError(f"cannot resolve role name {value!r}: the operator's account is not known yet")
    path_and_name = match["path"] + match["name"]
    return RoleRef(arn=base.prefix + path_and_name, path_and_name=path_and_name, name=match["name"])


_EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{2,1224}$", re.ASCII)


def check_external_id(value: str) -> None:
    """STS's rule for ExternalId (2-1224 of ``[\\w+=,.@:/-]``); RoleError otherwise, without echoing a huge value."""
    if not _EXTERNAL_ID.match(value):
        raise RoleError(f"{_shown(value)} is not a valid external id (2-1224 characters of letters, digits and +=,.@:/_-)")


@functools.lru_cache(maxsize=4096)  # one string object per distinct name, not one per pod
def sanitize_session_name(value: str) -> str:
    """A valid RoleSessionName (2-64 of [\\w+=,.@-]) from any string."""
    cleaned = _SESSION_NAME_BAD.sub("-", value)[:64]
    return cleaned if len(cleaned) >= 2 else (cleaned + "--")[:2]


def role_key(
    role_arn: str,
    external_id: str | None,
    duration: int,
    session_name: str,
    pod_uid: str | None = None,
) -> str:
    """The cache and wire key for one credential set: opaque, fixed length, no secrets.

    Shared sessions: one key per (role ARN, external id, duration, session
    name), so N pods on one role share one AssumeRole. Per-pod sessions add
    the pod's uid.
    """
    material = "\x00".join([role_arn, external_id or "", str(duration), session_name, pod_uid or ""])
    digest = hashlib.sha256(material.encode()).hexdigest()[:40]
    return ("p-" if pod_uid else "r-") + digest
