"""Namespace policy: which roles a namespace's pods may use.

Two annotations say it, each a permit list, and a role must pass every one
that is present (absent both: no role at all):

- Kiam's ``iam.amazonaws.com/permitted``: one regex, matched whole against
  one string per role (:func:`subject`): the name with its path for a role
  of the operator's own account, the full ARN for a role of any other
  account or partition;
- kube2iam's ``iam.amazonaws.com/allowed-roles`` (the key is kube2iam's
  ``--namespace-key``): a JSON list of globs or regexes over full role
  ARNs, name entries standing for the operator's own account
  (:mod:`allowed_roles`).

Either way a role name stands for the operator's account only, a role
elsewhere is permitted only by a pattern that matches its whole ARN, and
writing a role in another form can neither defeat an exclusion nor borrow a
permission. Kiam's ``--disable-strict-namespace-regexp`` (``strict=False``)
lets a regex match anywhere in what it is matched against, within the
operator's own account only: a role of another account still needs a
whole-ARN match.
"""

from __future__ import annotations

import dataclasses
import functools

# ``regex`` rather than ``re``: the same syntax, and a time limit on matching. The
# pattern comes from users; one that backtracks catastrophically ("(a|a)+" on a
# 40-character role name) would otherwise hold the operator's event loop for hours.
import regex as re  # type: ignore[import-untyped]

from podiam_operator._core import allowed_roles, roles
from podiam_operator._core.reasons import Reason

PERMITTED_ANNOTATION = "iam.amazonaws.com/permitted"
# A regex longer than this is refused rather than compiled (it comes from users).
MAX_REGEX_LENGTH = 2048
# A match of a role name or ARN (at most a few hundred characters) takes microseconds;
# a regex needing longer than this is declared unusable and denies every role.
MATCH_TIME_LIMIT = 0.05
# Verdicts a namespace's policy remembers (roles asked for there); past this it starts afresh.
_VERDICTS_KEPT = 1024
_PROBE_PREFIX = "arn:aws:iam::000000000000:role/"  # to compile name entries before the account is known


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: Reason  # for conditions and Events
    message: str


@dataclasses.dataclass(frozen=True)
class Rules:
    """How namespaces' annotations are read: the operator's settings (kube2iam's and Kiam's flags)."""

    allowed_roles_key: str = allowed_roles.ANNOTATION
    allowed_roles_format: allowed_roles.Format = "glob"
    strict: bool = True  # False: Kiam's --disable-strict-namespace-regexp


@dataclasses.dataclass(frozen=True)
class NamespacePolicy:
    namespace: str
    permitted: str | None  # the regex annotation as written; None when absent
    allowed_roles: str | None = None  # the list annotation as written; None when absent
    default_role: str | None = None  # the namespace's default role (its podiam.io/default-role), as written
    rules: Rules = Rules()

    @functools.cached_property
    def compiled(self) -> re.Pattern[str] | str:
        """The compiled regex, or the error message if it does not compile."""
        if self.permitted is None:
            return "absent"
        if len(self.permitted) > MAX_REGEX_LENGTH:
            return f"longer than {MAX_REGEX_LENGTH} characters"
        try:
            return re.compile(self.permitted)
        except re.error as error:
            return str(error)

    @functools.cached_property
    def entries(self) -> tuple[str, ...] | str:
        """The list annotation's entries, or why it cannot be used."""
        if self.allowed_roles is None:
            return "absent"
        try:
            entries = allowed_roles.parse(self.allowed_roles, self.rules.allowed_roles_key)
        except allowed_roles.AllowedRolesError as error:
            return str(error)
        for entry in entries:
            problem = allowed_roles.compile_entry(entry, self.rules.allowed_roles_format, _PROBE_PREFIX)
            if isinstance(problem, str):
                return f"{self.rules.allowed_roles_key}: {problem}"
        return entries

    @property
    def problem(self) -> str | None:
        """Why an annotation itself is unusable (None if both are usable or absent)."""
        if self.permitted is not None and isinstance(self.compiled, str):
            return self.compiled
        if self.allowed_roles is not None and isinstance(self.entries, str):
            return self.entries
        return None

    def check(self, role: roles.RoleRef, base: roles.BaseArn | None) -> Verdict:
        """Does every policy annotation present permit ``role``? Each matches one form of the role only.

        Remembered per (role, base): every pod of a namespace asks for the same few roles, and a regex
        match with its time limit costs more than the rest of a pod's decision.
        """
        verdicts: dict[tuple[roles.RoleRef, roles.BaseArn | None], Verdict] = self.__dict__.setdefault("_verdicts", {})
        verdict = verdicts.get((role, base))
        if verdict is None:
            verdict = self._check(role, base)
            if len(verdicts) >= _VERDICTS_KEPT:
                verdicts.clear()
            verdicts[(role, base)] = verdict
        return verdict

    def _check(self, role: roles.RoleRef, base: roles.BaseArn | None) -> Verdict:
        if self.permitted is None and self.allowed_roles is None:
            return Verdict(False, Reason.NAMESPACE_NOT_PERMITTED,
                           f"namespace {self.namespace!r} has no {PERMITTED_ANNOTATION} or {self.rules.allowed_roles_key} "
                           "annotation: no role is allowed there")
        if self.permitted is not None and isinstance(self.compiled, str):
            return Verdict(False, Reason.INVALID_PERMITTED_REGEX,
                           f"namespace {self.namespace!r}: {PERMITTED_ANNOTATION} {self.permitted!r} is not a valid regex "
                           f"({self.compiled}): every role is denied")
        if self.allowed_roles is not None and isinstance(self.entries, str):
            return Verdict(False, Reason.INVALID_ALLOWED_ROLES,
                           f"namespace {self.namespace!r}: {self.entries}: every role is denied")
        if base is None:
            return Verdict(False, Reason.ACCOUNT_NOT_KNOWN, f"role {role.arn} cannot be checked against namespace {self.namespace!r}'s "
                                                     "policy yet: the operator's own account is not known (GetCallerIdentity)")
        granted = []
        if self.permitted is not None:
            verdict = self._check_regex(role, base)
            if verdict is None:
                return self._check(role, base)  # the regex has just become unusable: say so
            if not verdict.allowed:
                return verdict
            granted.append(f"{PERMITTED_ANNOTATION} {self.permitted!r}")
        if self.allowed_roles is not None:
            verdict = self._check_list(role, base)
            if verdict is None:
                return self._check(role, base)
            if not verdict.allowed:
                return verdict
            granted.append(verdict.message)
        return Verdict(True, Reason.PERMITTED, "permitted by " + " and ".join(granted))

    def _matches(self, pattern: re.Pattern[str], text: str, role: roles.RoleRef, base: roles.BaseArn, *, regex: bool) -> bool:
        """Anchored at both ends (as Kiam does): "foo" must not permit "foo-admin". Non-strict: within this account only."""
        if regex and not self.rules.strict and base.holds(role):
            return pattern.search(text, timeout=MATCH_TIME_LIMIT) is not None
        return pattern.fullmatch(text, timeout=MATCH_TIME_LIMIT) is not None

    def _check_regex(self, role: roles.RoleRef, base: roles.BaseArn) -> Verdict | None:
        """The regex's verdict; None when matching timed out (the regex is unusable from now on)."""
        compiled = self.compiled
        assert not isinstance(compiled, str)
        text = subject(role, base)
        try:
            matched = self._matches(compiled, text, role, base, regex=True)
        except TimeoutError:
            # Unusable from now on, for every role: the cached compiled form becomes the reason.
            self.__dict__.pop("_verdicts", None)  # those were given by the regex that is unusable now
            self.__dict__["compiled"] = (f"matching took longer than {MATCH_TIME_LIMIT:g}s "
                                         "(catastrophic backtracking, e.g. nested quantifiers)")
            return None
        if matched:
            return Verdict(True, Reason.PERMITTED, "")
        return Verdict(False, Reason.ROLE_NOT_PERMITTED,
                       f"role {role.arn} is not permitted in namespace {self.namespace!r}: {PERMITTED_ANNOTATION} "
                       f"{self.permitted!r} does not match {text!r}{self._hint(compiled, role, base)}")

    def _hint(self, compiled: re.Pattern[str], role: roles.RoleRef, base: roles.BaseArn) -> str:
        """Why the other form of the role does not count, when it would have matched."""
        other = role.arn if base.holds(role) else role.path_and_name
        try:
            if compiled.fullmatch(other, timeout=MATCH_TIME_LIMIT) is None:
                return ""
        except TimeoutError:
            return ""
        if base.holds(role):
            return (f" (it matches the role's ARN, but a role of the operator's own account {base.prefix} "
                    f"is matched by its name: write {role.path_and_name!r} in the regex)")
        return (f" (a role name stands for the operator's own account {base.prefix} only: a role of "
                f"account {role.account} in partition {role.partition} is matched by its full ARN)")

    def _check_list(self, role: roles.RoleRef, base: roles.BaseArn) -> Verdict | None:
        """The list's verdict; None when matching an entry timed out (the list is unusable from now on)."""
        entries = self.entries
        assert not isinstance(entries, str)
        fmt, key = self.rules.allowed_roles_format, self.rules.allowed_roles_key
        regex = fmt == "regexp"
        for entry in entries:
            pattern = allowed_roles.compile_entry(entry, fmt, base.prefix)
            assert not isinstance(pattern, str)  # every entry compiled in ``entries``
            try:
                if self._matches(pattern, role.arn, role, base, regex=regex):
                    return Verdict(True, Reason.PERMITTED, f"{key} entry {entry!r}")
            except TimeoutError:
                self.__dict__.pop("_verdicts", None)
                self.__dict__["entries"] = (f"{key}: matching entry {entry!r} took longer than {MATCH_TIME_LIMIT:g}s "
                                            "(catastrophic backtracking, e.g. nested quantifiers)")
                return None
        return Verdict(False, Reason.ROLE_NOT_PERMITTED,
                       f"role {role.arn} is not permitted in namespace {self.namespace!r}: no entry of {key} "
                       f"{self.allowed_roles!r} ({fmt}) matches it{self._list_hint(entries, role, base)}")

    def _list_hint(self, entries: tuple[str, ...], role: roles.RoleRef, base: roles.BaseArn) -> str:
        """A name entry that would have matched this role were it in the operator's account."""
        if base.holds(role):
            return ""
        own = base.prefix + role.path_and_name
        for entry in entries:
            if entry.startswith("arn:"):
                continue
            pattern = allowed_roles.compile_entry(entry, self.rules.allowed_roles_format, base.prefix)
            try:
                if not isinstance(pattern, str) and pattern.fullmatch(own, timeout=MATCH_TIME_LIMIT) is not None:
                    return (f" (entry {entry!r} stands for {allowed_roles.expanded(entry, base)!r}: a name is a role of the "
                            f"operator's own account {base.prefix} only; a role of account {role.account} in partition "
                            f"{role.partition} needs an entry matching its full ARN)")
            except TimeoutError:
                return ""
        return ""


def subject(role: roles.RoleRef, base: roles.BaseArn) -> str:
    """The one string the namespace regex is matched against.

    A role of the operator's own account (its base ARN) is matched by its
    name with its path, however the pod or binding wrote it; any other role
    by its full ARN. Each role has exactly one form here, so writing the
    other one (an ARN for ``(?!admin).*``) can neither defeat an exclusion
    nor borrow a name's permission for another account's role of that name.
    """
    return role.path_and_name if base.holds(role) else role.arn


def unknown_namespace(namespace: str, rules: Rules = Rules()) -> NamespacePolicy:
    """A namespace the operator has not seen: treated as having no annotation (deny)."""
    return NamespacePolicy(namespace=namespace, permitted=None, rules=rules)
