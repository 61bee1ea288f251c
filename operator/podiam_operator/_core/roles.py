"""Role names and ARNs: strict parsing, resolution against the account's base ARN, cache keys.

What is accepted is narrower than IAM's own grammar on purpose. IAM allows a
role name of 1-64 ``[\\w+=,.@-]`` and a path of printable ASCII (``/`` or
``/…/``, up to 512 characters). Here a path segment may only hold a role
name's characters, and never be ``.`` or ``..`` (nor may the name): a path
like ``team-a/../admin`` passes a ``team-a/.*`` policy as text while naming
another role to anything that normalises it, and a ``:`` in a path would let
a role name read as an ARN. Every refusal says which part is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re

PARTITIONS = ("aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f", "aws-eusc")
MAX_NAME = 64
MAX_PATH = 512  # with its leading and trailing "/"

_SEGMENT = re.compile(r"[\w+=,.@-]+", re.ASCII)
_ACCOUNT = re.compile(r"\d{12}", re.ASCII)
_ARN = re.compile(r"arn:(?P<partition>[^:]*):iam::(?P<account>[^:]*):role/(?P<rest>.*)", re.ASCII | re.DOTALL)
_CALLER_ARN = re.compile(r"arn:(?P<partition>[^:]*):(?:sts|iam)::(?P<account>\d{12}):.*", re.ASCII | re.DOTALL)
_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]", re.ASCII)


class RoleError(ValueError):
    """A role name or ARN that cannot be used; the message says why, for the user."""


@dataclasses.dataclass(frozen=True, slots=True)
class RoleRef:
    arn: str
    partition: str
    account: str
    path: str  # "/" or "/path/to/"
    name: str  # the last segment: what a pod sees under security-credentials/

    @property
    def path_and_name(self) -> str:
        """``path/to/Role`` (no leading slash): how a role of the operator's own account is written and matched."""
        return self.path[1:] + self.name


def _shown(value: str) -> str:
    """A user's value in a message: quoted, clipped (an annotation may hold 256 KiB)."""
    return repr(value) if len(value) <= 100 else repr(value[:100]) + f"... ({len(value)} characters)"


def _split(value: str, rest: str) -> tuple[str, str]:
    """``path/to/Name`` -> ("/path/to/", "Name"), or RoleError saying what IAM (or podiam) would not accept."""
    *segments, name = rest.split("/")
    for segment in segments:
        if segment == "":
            raise RoleError(f"{_shown(value)}: empty path segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise RoleError(f"{_shown(value)}: {segment!r} path segments are refused (they could name a role outside the path)")
        if not _SEGMENT.fullmatch(segment):
            raise RoleError(f"{_shown(value)}: path segment {_shown(segment)} may only hold letters, digits and +=,.@_-")
    if name == "":
        raise RoleError(f"{_shown(value)}: the role name is missing (nothing after the last '/')")
    if name in (".", ".."):
        raise RoleError(f"{_shown(value)}: {name!r} is not a role name")
    if len(name) > MAX_NAME or not _SEGMENT.fullmatch(name):
        raise RoleError(f"{_shown(value)}: role name {_shown(name)} must be 1-{MAX_NAME} letters, digits and +=,.@_-")
    path = "/" + "".join(s + "/" for s in segments)
    if len(path) > MAX_PATH:
        raise RoleError(f"{_shown(value)}: the path is {len(path)} characters long (IAM allows {MAX_PATH})")
    return path, name


def parse_role_arn(value: str) -> RoleRef:
    """``arn:<partition>:iam::<account>:role/[path/]name``, strictly (see the module's docstring)."""
    match = _ARN.fullmatch(value)
    if match is None:
        raise RoleError(f"{_shown(value)} is not a valid IAM role ARN (arn:<partition>:iam::<12-digit account>:role/[path/]name)")
    if match["partition"] not in PARTITIONS:
        raise RoleError(f"{_shown(value)}: unknown partition {_shown(match['partition'])} (one of {', '.join(PARTITIONS)})")
    if not _ACCOUNT.fullmatch(match["account"]):
        raise RoleError(f"{_shown(value)}: the account must be 12 digits, not {_shown(match['account'])}")
    path, name = _split(value, match["rest"])
    return RoleRef(arn=value, partition=match["partition"], account=match["account"], path=path, name=name)


@dataclasses.dataclass(frozen=True)
class BaseArn:
    """``arn:<partition>:iam::<account>:role/``: what role names resolve against, the operator's own account."""

    partition: str
    account: str

    @property
    def prefix(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/"

    def holds(self, role: RoleRef) -> bool:
        """Is ``role`` in this account and partition?"""
        return (role.partition, role.account) == (self.partition, self.account)

    @classmethod
    def parse(cls, value: str) -> BaseArn:
        match = re.fullmatch(r"arn:(?P<partition>[a-z-]+):iam::(?P<account>\d{12}):role(?:/.*)?", value, re.ASCII | re.DOTALL)
        if match is None or match["partition"] not in PARTITIONS:
            raise RoleError(f"{value!r} is not a base role ARN like arn:aws:iam::123456789012:role/")
        return cls(match["partition"], match["account"])

    @classmethod
    def from_caller_identity(cls, arn: str, account: str | None = None) -> BaseArn:
        """From GetCallerIdentity's Arn (a user, a role or an assumed-role session): partition-aware."""
        match = _CALLER_ARN.fullmatch(arn)
        if match is None or match["partition"] not in PARTITIONS:
            raise RoleError(f"cannot derive the account from caller identity {arn!r}")
        return cls(match["partition"], account or match["account"])


def resolve(value: str, base: BaseArn | None) -> RoleRef:
    """A pod annotation's or binding's role (name, path/name or ARN) as a role; RoleError says what is wrong."""
    value = value.strip()
    if value.startswith("arn:"):
        return parse_role_arn(value)
    if ":" in value:
        raise RoleError(f"{_shown(value)} is neither a role name (no ':') nor a role ARN (arn:<partition>:iam::<account>:role/...)")
    path, name = _split(value, value[1:] if value.startswith("/") else value)
    if base is None:
        raise RoleError(f"cannot resolve role name {value!r}: the operator's account is not known yet")
    return RoleRef(arn=base.prefix + path[1:] + name, partition=base.partition, account=base.account, path=path, name=name)


_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}", re.ASCII)


def check_external_id(value: str) -> None:
    """STS's rule for ExternalId (2-1224 of ``[\\w+=,.@:/-]``); RoleError otherwise, without echoing a huge value."""
    if not _EXTERNAL_ID.fullmatch(value):
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
    *,
    via: str | None = None,
    tags: tuple[tuple[str, str], ...] = (),
) -> str:
    """The cache and wire key for one credential set: opaque, fixed length, no secrets.

    Shared sessions: one key per (role ARN, external id, duration, session
    name, intermediate role, session tags), so N pods on one role share one
    AssumeRole. Per-pod sessions add the pod's uid.
    """
    parts = [role_arn, external_id or "", str(duration), session_name, pod_uid or ""]
    if via or tags:  # only then: the keys of plain sessions stay what earlier versions made
        parts += [via or "", *(f"{k}\x01{v}" for k, v in tags)]
    material = "\x00".join(parts)
    digest = hashlib.sha256(material.encode()).hexdigest()[:40]
    return ("p-" if pod_uid else "r-") + digest
