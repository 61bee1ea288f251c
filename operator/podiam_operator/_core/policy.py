"""Namespace policy: the anchored ``iam.amazonaws.com/permitted`` regex."""

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

    def check(self, role: roles.RoleRef) -> Verdict:
        compiled = self.compiled
        if self.permitted is None:
            return Verdict(False, "NamespaceNotPermitted",
                           f"namespace {self.namespace!r} has no {PERMITTED_ANNOTATION} annotation: no role is allowed there")
        if isinstance(compiled, str):
            return Verdict(False, "InvalidPermittedRegex",
                           f"namespace {self.namespace!r}: {PERMITTED_ANNOTATION} {self.permitted!r} is not a valid regex "
                           f"({compiled}): every role is denied")
        # Anchored at both ends (as Kiam does): "foo" must not permit "foo-admin".
        # Matched against the role's name (with its path) and its full ARN.
        try:
            matched = any(compiled.fullmatch(text, timeout=MATCH_TIME_LIMIT) for text in (role.path_and_name, role.arn))
        except TimeoutError:
            # Unusable from now on, for every role: the cached compiled form becomes the reason.
            self.__dict__["compiled"] = (f"matching took longer than {MATCH_TIME_LIMIT:g}s "
                                         "(catastrophic backtracking, e.g. nested quantifiers)")
            return self.check(role)
        if matched:
            return Verdict(True, "Permitted", f"permitted by {PERMITTED_ANNOTATION} {self.permitted!r}")
        return Verdict(False, "RoleNotPermitted",
                       f"role {role.arn} is not permitted in namespace {self.namespace!r} "
                       f"({PERMITTED_ANNOTATION} is {self.permitted!r})")


DENY_UNKNOWN = "namespace not seen yet"


def unknown_namespace(namespace: str) -> NamespacePolicy:
    """A namespace the operator has not seen: treated as having no annotation (deny)."""
    return NamespacePolicy(namespace=namespace, permitted=None)
