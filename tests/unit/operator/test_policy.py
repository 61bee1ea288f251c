from __future__ import annotations

import pytest

from podiam_operator._core import roles
from tests.unit.operator.conftest import namespace

pytestmark = pytest.mark.unit
BASE = roles.BaseArn("aws", "123456789012")


def check(permitted: str | None, role: str) -> tuple[bool, str]:
    verdict = namespace(permitted=permitted).check(roles.resolve(role, BASE), BASE)
    return verdict.allowed, verdict.reason


def test_absent_annotation_denies() -> None:
    assert check(None, "foo") == (False, "NamespaceNotPermitted")


def test_regex_is_anchored() -> None:
    assert check("foo", "foo") == (True, "Permitted")
    assert check("foo", "foo-admin") == (False, "RoleNotPermitted")
    assert check("foo", "xfoo") == (False, "RoleNotPermitted")
    assert check("foo|bar", "bar") == (True, "Permitted")
    assert check("foo|bar", "foobar") == (False, "RoleNotPermitted")


def test_a_role_of_the_operators_account_is_matched_by_its_name_with_path_however_written() -> None:
    for written in ("team/app", "/team/app", "arn:aws:iam::123456789012:role/team/app"):
        assert check("team/.*", written) == (True, "Permitted"), written
        assert check("team/app", written) == (True, "Permitted"), written
        # Its ARN is not what is matched: a regex of ARNs of the operator's own account permits none of them.
        assert check("arn:aws:iam::123456789012:role/team/app", written) == (False, "RoleNotPermitted"), written
    assert check("team/.*", "app")[0] is False
    # The last path segment alone does not match: it would permit another role of that name.
    assert check("app", "evil/app")[0] is False


@pytest.mark.parametrize("role", [
    "arn:aws:iam::999999999999:role/reader",  # another account
    "arn:aws-us-gov:iam::123456789012:role/reader",  # another partition, the same account number
    "arn:aws-cn:iam::999999999999:role/reader",
])
def test_a_name_permits_the_operators_account_only(role: str) -> None:
    assert check("reader", role) == (False, "RoleNotPermitted")
    # A regex is matched whole against the ARN: ".*reader" matches it (documented), "[^:]*reader" (names only) does not.
    assert check(".*reader", role) == (True, "Permitted")
    assert check("[^:]*reader", role) == (False, "RoleNotPermitted")
    assert check(role, role) == (True, "Permitted")  # its full ARN permits it
    assert check(r"arn:aws[a-z-]*:iam::\d{12}:role/reader", role) == (True, "Permitted")
    assert check(r"[^:]*", role)[0] is False  # a regex of names only: this account's roles, nothing else


@pytest.mark.parametrize("permitted", ["(?!admin).*", "(?!admin)[^:]*", "(?!.*admin).*", "team-a/.*"])
@pytest.mark.parametrize("role", ["admin", "/admin", "arn:aws:iam::123456789012:role/admin", "arn:aws:iam::123456789012:role/team-a/admin"])
def test_an_exclusion_cannot_be_defeated_by_writing_the_other_form(permitted: str, role: str) -> None:
    name = roles.resolve(role, BASE).path_and_name
    expected = "admin" not in name if permitted.startswith("(?!.*") else not name.startswith("admin")
    if permitted == "team-a/.*":
        expected = name.startswith("team-a/")
    assert check(permitted, role)[0] is expected, (permitted, role)
    # Whichever form the pod writes, the verdict is the same.
    assert check(permitted, role) == check(permitted, name)


def test_deny_style_regexes_match_every_other_accounts_arn_unless_they_say_names_only() -> None:
    foreign = "arn:aws:iam::999999999999:role/admin"
    assert check("(?!admin).*", foreign) == (True, "Permitted")  # the regex matches the whole ARN: documented
    assert check("(?!admin)[^:]*", foreign) == (False, "RoleNotPermitted")


def test_denials_say_what_was_matched_and_why_the_other_form_does_not_count() -> None:
    policy = namespace(permitted="reader")
    foreign = policy.check(roles.resolve("arn:aws:iam::999999999999:role/reader", BASE), BASE)
    assert "does not match 'arn:aws:iam::999999999999:role/reader'" in foreign.message
    assert "a role name stands for the operator's own account arn:aws:iam::123456789012:role/ only" in foreign.message
    own = namespace(permitted="arn:aws:iam::123456789012:role/reader").check(roles.resolve("reader", BASE), BASE)
    assert "does not match 'reader'" in own.message and "write 'reader' in the regex" in own.message
    plain = policy.check(roles.resolve("writer", BASE), BASE)
    assert plain.message.endswith("does not match 'writer'")


def test_without_the_operators_account_no_arn_can_be_judged() -> None:
    verdict = namespace(permitted=".*").check(roles.resolve("arn:aws:iam::123456789012:role/x", BASE), None)
    assert (verdict.allowed, verdict.reason) == (False, "AccountNotKnown")


def test_invalid_regex_denies_and_says_why() -> None:
    policy = namespace(permitted="foo(")
    verdict = policy.check(roles.resolve("foo", BASE), BASE)
    assert (verdict.allowed, verdict.reason) == (False, "InvalidPermittedRegex")
    assert "not a valid regex" in verdict.message
    assert policy.problem


def test_oversized_regex_denies() -> None:
    assert check("a" * 5000, "a")[0] is False


@pytest.mark.parametrize("pattern", ["(a|a)+", "(a|aa)+", "(a+)+(b+)+c"])
def test_backtracking_regexes_are_answered_quickly(pattern: str) -> None:
    # Found by tests/fault/test_malformed.py: "(a|a)+" against a 40-character role
    # name held the operator's event loop (every namespace stalled).
    import time

    from podiam_operator._core import policy as policies

    ns = policies.NamespacePolicy("t", pattern)
    started = time.monotonic()
    verdict = ns.check(roles.resolve("a" * 40 + "-b", BASE), BASE)
    assert time.monotonic() - started < 2
    assert not verdict.allowed
    if verdict.reason == "InvalidPermittedRegex":
        assert "backtracking" in verdict.message and ns.problem
        # Unusable for every later role too, without trying again.
        assert ns.check(roles.resolve("aaaa", BASE), BASE).reason == "InvalidPermittedRegex"
    else:
        assert verdict.reason == "RoleNotPermitted", verdict


def test_a_regex_that_times_out_is_reported() -> None:
    from podiam_operator._core import policy as policies

    ns = policies.NamespacePolicy("t", "(a|a)+")
    verdict = ns.check(roles.resolve("a" * 40 + "-b", BASE), BASE)
    assert verdict.reason == "InvalidPermittedRegex" and "catastrophic backtracking" in verdict.message


def test_a_remembered_verdict_goes_when_the_regex_becomes_unusable() -> None:
    from podiam_operator._core import policy as policies

    ns = policies.NamespacePolicy("t", "(a|a)+")
    short = roles.resolve("aaaa", BASE)
    assert ns.check(short, BASE).allowed  # matched at once, and remembered
    assert ns.check(roles.resolve("a" * 40 + "-b", BASE), BASE).reason == "InvalidPermittedRegex"
    # The role allowed before is refused now: the policy that allowed it is unusable.
    assert ns.check(short, BASE).reason == "InvalidPermittedRegex"
