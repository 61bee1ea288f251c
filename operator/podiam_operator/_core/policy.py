"""Namespace policy: the anchored ``iam.amazonaws.com/permitted`` regex.

The regex is matched, whole, against one string per role (:func:`subject`):
the name with its path for a role of the operator's own account, the full
ARN for a role of any other account or partition.
"""

from __future__ import annotations

import dataclasses
import functools

# ``regex`` rather than ``re``: the same syntax, and a time limit on matching. The
# pattern comes from users; one that backtracks catastrophically ("(a|a)+" on a
# 40-character role name) would otherwise hold the operator's event loop for hours.
import regex as re  # type: ignore[import-untyped]

from podiam_operator._core import roles

PERMITTED_ANNOTATION = "iam.amazonaws.com/permitted"
# A regex longer than this is refused rather than compiled (it comes from users).
MAX_REGEX_LENGTH = 2048
# A match of a role name or ARN (at most a few hundred characters) takes microseconds;
# a regex needing longer than this is declared unusable and denies every role.
MATCH_TIME_LIMIT = 0.05


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str  # CamelCase, for conditions and Events
    message: str


@dataclasses.dataclass(frozen=True)
class NamespacePolicy:
    namespace: str
    permitted: str | None  # the annotation as written; None when absent

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

    @property
    def problem(self) -> str | None:
        """Why the regex itself is unusable (None if it compiles), for Events on the namespace's bindings."""
        if self.permitted is None:
            return None
        compiled = self.compiled
        return compiled if isinstance(compiled, str) else None

    def check(self, role: roles.RoleRef, base: roles.BaseArn | None) -> Verdict:
        """Does the regex permit ``role``? It is matched against one form of the role only (:func:`subject`)."""
        compiled = self.compiled
        if self.permitted is None:
            return Verdict(False, "NamespaceNotPermitted",
                           f"namespace {self.namespace!r} has no {PERMITTED_ANNOTATION} annotation: no role is allowed there")
        if isinstance(compiled, str):
            return Verdict(False, "InvalidPermittedRegex",
                           f"namespace {self.namespace!r}: {PERMITTED_ANNOTATION} {self.permitted!r} is not a valid regex "
                           f"({compiled}): every role is denied")
        if base is None:
            return Verdict(False, "AccountNotKnown", f"role {role.arn} cannot be checked against namespace {self.namespace!r}'s "
                                                     "policy yet: the operator's own account is not known (GetCallerIdentity)")
        text = subject(role, base)
        try:
            # Anchored at both ends (as Kiam does): "foo" must not permit "foo-admin".
            matched = compiled.fullmatch(text, timeout=MATCH_TIME_LIMIT) is not None
        except TimeoutError:
            # Unusable from now on, for every role: the cached compiled form becomes the reason.
            self.__dict__["compiled"] = (f"matching took longer than {MATCH_TIME_LIMIT:g}s "
                                         "(catastrophic backtracking, e.g. nested quantifiers)")
            return self.check(role, base)
        if matched:
            return Verdict(True, "Permitted", f"permitted by {PERMITTED_ANNOTATION} {self.permitted!r}")
        return Verdict(False, "RoleNotPermitted",
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


def subject(role: roles.RoleRef, base: roles.BaseArn) -> str:
    """The one string the namespace regex is matched against.

    A role of the operator's own account (its base ARN) is matched by its
    name with its path, however the pod or binding wrote it; any other role
    by its full ARN. Each role has exactly one form here, so writing the
    other one (an ARN for ``(?!admin).*``) can neither defeat an exclusion
    nor borrow a name's permission for another account's role of that name.
    """
    return role.path_and_name if base.holds(role) else role.arn


DENY_UNKNOWN = "namespace not seen yet"


def unknown_namespace(namespace: str) -> NamespacePolicy:
    """A namespace the operator has not seen: treated as having no annotation (deny)."""
    return NamespacePolicy(namespace=namespace, permitted=None)
