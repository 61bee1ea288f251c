from __future__ import annotations

import pytest

from podiam_operator._core import roles
from tests.unit.operator.conftest import namespace

pytestmark = pytest.mark.unit
BASE = roles.BaseArn("aws", "123456789012")


def check(permitted: str | None, role: str) -> tuple[bool, str]:
    verdict = namespace(permitted=permitted).check(roles.resolve(role, BASE))
    return verdict.allowed, verdict.reason


def test_absent_annotation_denies() -> None:
    assert check(None, "foo") == (False, "NamespaceNotPermitted")


def test_regex_is_anchored() -> None:
    assert check("foo", "foo") == (True, "Permitted")
    assert check("foo", "foo-admin") == (False, "RoleNotPermitted")
    assert check("foo", "xfoo") == (False, "RoleNotPermitted")
    assert check("foo|bar", "bar") == (True, "Permitted")
    assert check("foo|bar", "foobar") == (False, "RoleNotPermitted")


def test_regex_matches_the_name_with_path_or_the_arn() -> None:
    assert check("team/.*", "team/app") == (True, "Permitted")
    assert check("team/.*", "app")[0] is False
    assert check("arn:aws:iam::123456789012:role/app", "app") == (True, "Permitted")
    assert check(r"arn:aws:iam::123456789012:role/.*", "arn:aws:iam::999999999999:role/app")[0] is False
    # The last path segment alone does not match: it would permit another role of that name.
    assert check("app", "evil/app")[0] is False


def test_invalid_regex_denies_and_says_why() -> None:
    policy = namespace(permitted="foo(")
    verdict = policy.check(roles.resolve("foo", BASE))
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
    verdict = ns.check(roles.resolve("a" * 40 + "-b", BASE))
    assert time.monotonic() - started < 2
    assert not verdict.allowed
    if verdict.reason == "InvalidPermittedRegex":
        assert "backtracking" in verdict.message and ns.problem
        # Unusable for every later role too, without trying again.
        assert ns.check(roles.resolve("aaaa", BASE)).reason == "InvalidPermittedRegex"
    else:
        assert verdict.reason == "RoleNotPermitted", verdict


def test_a_regex_that_times_out_is_reported() -> None:
    from podiam_operator._core import policy as policies

    ns = policies.NamespacePolicy("t", "(a|a)+")
    verdict = ns.check(roles.resolve("a" * 40 + "-b", BASE))
    assert verdict.reason == "InvalidPermittedRegex" and "catastrophic backtracking" in verdict.message
