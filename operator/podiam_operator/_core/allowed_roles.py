"""kube2iam's namespace policy: ``iam.amazonaws.com/allowed-roles``, a JSON list of role patterns.

Each entry is a glob (kube2iam's default ``--namespace-restriction-format
glob``: ``*`` matches any run of characters, nothing else is special) or a
regex (``regexp``). As in kube2iam, an entry that does not start with
``arn:`` stands for roles of the operator's own account: it is put behind
the operator's base ARN (``arn:<partition>:iam::<account>:role/``), and a
role's full ARN is matched against the result. So a name entry can only
permit a role of the operator's account and a role anywhere else only an
ARN entry, and since a role is always matched by its one full ARN, writing
it as a name or as an ARN changes nothing.

Unlike kube2iam's regexp format, a regex entry is matched whole (``foo``
does not permit ``foo-admin``), unless the operator runs with
``--disable-strict-namespace-regexp``, and even then only within its own
account (see :mod:`policy`).
"""

from __future__ import annotations

import functools
import json
import re as _re
from typing import Literal

# ``regex``: a time limit on matching (entries come from namespace annotations); see policy.py.
import regex as re  # type: ignore[import-untyped]

from podiam_operator._core import roles

ANNOTATION = "iam.amazonaws.com/allowed-roles"
Format = Literal["glob", "regexp"]
MAX_ENTRIES = 256
MAX_ENTRY_LENGTH = 2048


class AllowedRolesError(ValueError):
    """The annotation cannot be used as written; the message says why."""


def parse(raw: str, key: str = ANNOTATION) -> tuple[str, ...]:
    """The annotation's entries: a JSON list of strings (kube2iam's form), or AllowedRolesError."""
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise AllowedRolesError(f"{key} is not a JSON list of roles ({error})") from None
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise AllowedRolesError(f"{key} must be a JSON list of strings, like [\"my-app-*\", \"arn:aws:iam::111122223333:role/x\"]")
    if len(value) > MAX_ENTRIES:
        raise AllowedRolesError(f"{key} has {len(value)} entries (at most {MAX_ENTRIES})")
    for entry in value:
        if not entry or len(entry) > MAX_ENTRY_LENGTH:
            raise AllowedRolesError(f"{key}: every entry must be 1-{MAX_ENTRY_LENGTH} characters long")
    return tuple(value)


def _glob(pattern: str) -> str:
    """go-glob's rule, which kube2iam uses: ``*`` is any run of characters, everything else itself."""
    return ".*".join(_re.escape(part) for part in pattern.split("*"))


@functools.lru_cache(maxsize=1024)
def compile_entry(entry: str, fmt: Format, prefix: str) -> re.Pattern[str] | str:
    """The entry as a regex over full role ARNs, a name entry behind ``prefix``; or why it does not compile."""
    is_arn = entry.startswith("arn:")
    if fmt == "glob":
        text = _glob(entry) if is_arn else _re.escape(prefix) + _glob(entry.removeprefix("/"))
    else:
        text = entry if is_arn else _re.escape(prefix) + "(?:" + entry.removeprefix("/") + ")"
    try:
        return re.compile(text)
    except re.error as error:
        return f"entry {entry!r} is not a valid regex ({error})"


def expanded(entry: str, base: roles.BaseArn) -> str:
    """How an entry reads once a name is put behind the base ARN, for messages."""
    return entry if entry.startswith("arn:") else base.prefix + entry.removeprefix("/")
