"""kube2iam's namespace policy (iam.amazonaws.com/allowed-roles) and Kiam's non-strict regex, under issue 13's rules:
a name stands for the operator's own account only, another account's role needs a whole-ARN match, and writing a
role in another form changes nothing."""

from __future__ import annotations

import json
import time

import pytest

from podiam_operator._core import facts, policy, roles
from tests.unit.operator.conftest import namespace

pytestmark = pytest.mark.unit
BASE = roles.BaseArn("aws", "123456789012")
OWN = "arn:aws:iam::123456789012:role/"
FOREIGN = "arn:aws:iam::999999999999:role/"


def reader(fmt: str = "glob", *, strict: bool = True, key: str = "iam.amazonaws.com/allowed-roles") -> facts.Reader:
    return facts.Reader(rules=policy.Rules(key, fmt, strict))  # type: ignore[arg-type]


def check(entries: list[str] | str, role: str, fmt: str = "glob", *, permitted: str | None = None,
          strict: bool = True) -> tuple[bool, str]:
    raw = entries if isinstance(entries, str) else json.dumps(entries)
    ns = namespace(permitted=permitted, allowed_roles=raw, reader=reader(fmt, strict=strict))
    verdict = ns.check(roles.resolve(role, BASE), BASE)
    return verdict.allowed, verdict.reason


@pytest.mark.parametrize("fmt", ["glob", "regexp"])
def test_a_name_entry_stands_for_the_operators_account_only(fmt: str) -> None:
    entry = "reader"
    for written in ("reader", "/reader", OWN + "reader"):
        assert check([entry], written, fmt) == (True, "Permitted"), written
    for other in (FOREIGN + "reader", "arn:aws-us-gov:iam::123456789012:role/reader"):
        assert check([entry], other, fmt) == (False, "RoleNotPermitted"), other
    # Matched whole: not a role that merely starts or ends like it.
    assert check([entry], "reader-admin", fmt)[0] is False
    assert check([entry], "team/reader", fmt)[0] is False


def test_globs_are_kube2iams_star_matches_anything_nothing_else_is_special() -> None:
    assert check(["my-app-*"], "my-app-reader") == (True, "Permitted")
    assert check(["my-app-*"], "my-app-/team/x")[0] is True  # go-glob's * crosses "/" as well
    assert check(["my-app-*"], "other")[0] is False
    assert check(["a.b"], "axb")[0] is False  # "." is itself
    assert check(["a?"], "ab")[0] is False  # no "?"
    assert check(["[ab]"], "a")[0] is False  # no classes
    assert check(["*"], "anything/at/all") == (True, "Permitted")
    assert check(["*"], FOREIGN + "anything")[0] is False  # a name pattern: this account only


def test_an_arn_entry_permits_what_its_whole_arn_matches() -> None:
    assert check([FOREIGN + "reader"], FOREIGN + "reader") == (True, "Permitted")
    assert check([FOREIGN + "reader"], FOREIGN + "reader-admin")[0] is False
    assert check(["arn:aws:iam::*:role/reader"], FOREIGN + "reader")[0] is True
    assert check(["arn:aws:iam::*:role/reader"], "reader")[0] is True  # the own account's too: its ARN matches
    assert check([OWN + "team/*"], "team/app")[0] is True  # an ARN entry of the own account works (kube2iam users write them)
    assert check([r"arn:aws:iam::\d{12}:role/reader"], FOREIGN + "reader", "regexp")[0] is True


@pytest.mark.parametrize("role", ["admin", "/admin", OWN + "admin"])
def test_a_regexp_entrys_exclusion_holds_however_the_role_is_written(role: str) -> None:
    assert check(["(?!admin).*"], role, "regexp")[0] is False
    assert check(["(?!admin).*"], "reader", "regexp")[0] is True
    # The alternation stays inside the name: "foo|bar" does not become "<prefix>foo" or anything containing "bar".
    assert check(["foo|bar"], "bar", "regexp")[0] is True
    assert check(["foo|bar"], FOREIGN + "bar", "regexp")[0] is False
    assert check(["foo|bar"], "xbar", "regexp")[0] is False


def test_a_denial_says_which_entries_and_why_a_name_does_not_reach_another_account() -> None:
    ns = namespace(permitted=None, allowed_roles='["reader"]')
    verdict = ns.check(roles.resolve(FOREIGN + "reader", BASE), BASE)
    assert not verdict.allowed and "no entry of iam.amazonaws.com/allowed-roles" in verdict.message
    assert f"entry 'reader' stands for '{OWN}reader'" in verdict.message and "full ARN" in verdict.message
    assert namespace(permitted=None, allowed_roles='["reader"]').check(roles.resolve("reader", BASE), BASE).message == (
        "permitted by iam.amazonaws.com/allowed-roles entry 'reader'")


@pytest.mark.parametrize(("raw", "says"), [
    ("reader", "not a JSON list"),
    ('{"a": 1}', "JSON list of strings"),
    ('["ok", 3]', "JSON list of strings"),
    ('[""]', "1-2048 characters"),
    (json.dumps(["x"] * 300), "at most 256"),
])
def test_an_unusable_list_denies_every_role_and_says_why(raw: str, says: str) -> None:
    ns = namespace(permitted=".*", allowed_roles=raw)
    verdict = ns.check(roles.resolve("reader", BASE), BASE)
    assert (verdict.allowed, verdict.reason) == (False, "InvalidAllowedRoles")
    assert says in verdict.message and ns.problem


def test_an_invalid_regexp_entry_denies_every_role() -> None:
    assert check(["ok", "bad("], "ok", "regexp") == (False, "InvalidAllowedRoles")
    assert check(["ok", "bad("], "ok", "glob") == (True, "Permitted")  # a glob has no syntax to get wrong


def test_a_catastrophic_entry_is_answered_quickly_and_then_unusable() -> None:
    ns = namespace(permitted=None, allowed_roles='["(a|a)+"]', reader=reader("regexp"))
    started = time.monotonic()
    verdict = ns.check(roles.resolve("a" * 40 + "-b", BASE), BASE)
    assert time.monotonic() - started < 2 and not verdict.allowed
    if verdict.reason == "InvalidAllowedRoles":
        assert "catastrophic backtracking" in verdict.message


def test_both_annotations_present_a_role_must_pass_both() -> None:
    assert check(["reader", "admin"], "admin", permitted="(?!admin).*") == (False, "RoleNotPermitted")
    assert check(["reader"], "writer", permitted=".*") == (False, "RoleNotPermitted")
    allowed = namespace(permitted="[^:]*", allowed_roles='["reader"]').check(roles.resolve("reader", BASE), BASE)
    assert allowed.allowed and "iam.amazonaws.com/permitted" in allowed.message and "allowed-roles" in allowed.message


def test_neither_annotation_denies_and_names_both() -> None:
    verdict = namespace(permitted=None).check(roles.resolve("reader", BASE), BASE)
    assert verdict.reason == "NamespaceNotPermitted"
    assert "iam.amazonaws.com/permitted or iam.amazonaws.com/allowed-roles" in verdict.message


def test_the_annotation_key_is_kube2iams_namespace_key() -> None:
    custom = reader(key="example.com/roles")
    ns = facts.namespace_policy({"metadata": {"name": "team", "annotations": {
        "example.com/roles": '["reader"]', "iam.amazonaws.com/allowed-roles": '["*"]'}}}, custom)
    assert ns.check(roles.resolve("reader", BASE), BASE).allowed
    assert not ns.check(roles.resolve("writer", BASE), BASE).allowed  # the default key is not read


# --- Kiam's --disable-strict-namespace-regexp ------------------------------------------------------------


def strict(permitted: str, role: str, *, on: bool) -> bool:
    ns = namespace(permitted=permitted, reader=reader(strict=on))
    return ns.check(roles.resolve(role, BASE), BASE).allowed


def test_non_strict_matches_anywhere_in_the_name_the_risk_it_carries() -> None:
    assert strict("foo", "foo-admin", on=True) is False
    assert strict("foo", "foo-admin", on=False) is True  # the documented risk
    assert strict("(?!admin).*", "admin", on=False) is True  # an exclusion no longer holds: "dmin" matches
    assert check(["foo"], "foo-admin", "regexp", strict=False)[0] is True
    assert check(["foo"], "foo-admin", "glob", strict=False)[0] is False  # a glob is whole either way (go-glob)


@pytest.mark.parametrize("role", [FOREIGN + "reader", FOREIGN + "reader-x", "arn:aws-cn:iam::123456789012:role/reader"])
def test_non_strict_never_reaches_another_account(role: str) -> None:
    assert strict("reader", role, on=False) is False
    assert strict(".*reader", role, on=False) is (not role.endswith("-x"))  # a whole-ARN match is still one
    assert check(["reader"], role, "regexp", strict=False)[0] is False
    assert check(["arn:aws:iam::999999999999:role/reader"], FOREIGN + "reader-x", "regexp", strict=False)[0] is False
