from __future__ import annotations

import pytest

from podiam_operator._core import roles

pytestmark = pytest.mark.unit
BASE = roles.BaseArn("aws", "123456789012")


@pytest.mark.parametrize(
    ("value", "arn", "name"),
    [
        ("MyRole", "arn:aws:iam::123456789012:role/MyRole", "MyRole"),
        ("path/to/MyRole", "arn:aws:iam::123456789012:role/path/to/MyRole", "MyRole"),
        ("/path/MyRole", "arn:aws:iam::123456789012:role/path/MyRole", "MyRole"),
        ("arn:aws:iam::210987654321:role/x/Other", "arn:aws:iam::210987654321:role/x/Other", "Other"),
        ("arn:aws-cn:iam::123456789012:role/Cn", "arn:aws-cn:iam::123456789012:role/Cn", "Cn"),
        ("role+=,.@_-", "arn:aws:iam::123456789012:role/role+=,.@_-", "role+=,.@_-"),
    ],
)
def test_resolve(value: str, arn: str, name: str) -> None:
    ref = roles.resolve(value, BASE)
    assert (ref.arn, ref.name) == (arn, name)


@pytest.mark.parametrize(
    "value",
    ["bad role", "a//b", "x" * 65, "arn:aws:iam::12:role/x", "arn:aws:iam::123456789012:user/x", "arn:nope:iam::123456789012:role/x",
     "arn:aws:iam::123456789012:role/", "", "role/", "a:b/c"],
)
def test_malformed_roles_are_refused_with_a_reason(value: str) -> None:
    with pytest.raises(roles.RoleError) as error:
        roles.resolve(value, BASE)
    assert str(error.value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("team-a/../admin", "'..' path segments are refused"),
        ("team-a/./admin", "'.' path segments are refused"),
        ("../admin", "'..' path segments are refused"),
        ("/../admin", "'..' path segments are refused"),
        ("team-a/..", "'..' is not a role name"),
        (".", "'.' is not a role name"),
        ("arn:aws:iam::123456789012:role/team-a/../admin", "'..' path segments are refused"),
        ("arn:aws:iam::123456789012:role/./admin", "'.' path segments are refused"),
        ("arn:aws:iam::123456789012:role/..", "'..' is not a role name"),
        ("arn:aws:iam::123456789012:role/a//b", "empty path segment"),
        ("//admin", "empty path segment"),
        ("team-a/", "the role name is missing"),
        # IAM allows any printable character in a path; podiam only a name's: no ':' (an ARN), '*' or '%' (wildcards, escapes).
        ("arn:aws:iam::123456789012:role/arn:aws:iam::999999999999:role/x", "may only hold"),
        ("team*/x", "may only hold"),
        ("team%2F/x", "may only hold"),
        ("arn:aws:iam::123456789012:role/t\u00e9am/x", "may only hold"),
        ("r\u00f4le", "must be 1-64"),
        ("arn:aws:iam::123456789012:role/" + "x" * 65, "must be 1-64"),
        ("/".join(["p" * 100] * 6) + "/name", "the path is 607 characters long (IAM allows 512)"),
        ("arn:aws:iam::1234567890123:role/x", "12 digits"),
        ("arn:aws:iam::12345678901x:role/x", "12 digits"),
        ("arn:aws:iam::\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662:role/x", "12 digits"),  # Arabic-Indic digits
        ("arn:aws-moon:iam::123456789012:role/x", "unknown partition"),
        ("arn:aws:iam:us-east-1:123456789012:role/x", "not a valid IAM role ARN"),
        ("ARN:aws:iam::123456789012:role/x", "neither a role name"),
    ],
)
def test_what_iam_would_not_accept_and_dot_segments_are_refused(value: str, says: str) -> None:
    with pytest.raises(roles.RoleError) as error:
        roles.resolve(value, BASE)
    assert says in str(error.value), error.value


def test_an_arn_setting_with_a_trailing_newline_is_refused() -> None:
    # resolve() strips what users write; a flag's value is taken as it is (a "$" would have let the newline through).
    with pytest.raises(roles.RoleError, match="must be 1-64"):
        roles.parse_role_arn("arn:aws:iam::123456789012:role/x\n")


def test_the_longest_path_iam_accepts_is_accepted() -> None:
    path = "/".join(["p" * 100] * 5) + "/" + "q" * 5  # "/" + 510 characters + "/": 512
    ref = roles.resolve(path + "/" + "n" * 64, BASE)
    assert len(ref.path) == 512 and ref.name == "n" * 64
    assert roles.parse_role_arn(ref.arn) == ref


def test_a_role_knows_its_account_and_partition() -> None:
    ref = roles.resolve("arn:aws-us-gov:iam::123456789012:role/team/reader", BASE)
    assert (ref.partition, ref.account, ref.path, ref.name) == ("aws-us-gov", "123456789012", "/team/", "reader")
    assert ref.path_and_name == "team/reader"
    assert not BASE.holds(ref)
    assert BASE.holds(roles.resolve("team/reader", BASE))
    assert BASE.holds(roles.resolve("arn:aws:iam::123456789012:role/team/reader", BASE))
    assert not BASE.holds(roles.resolve("arn:aws:iam::999999999999:role/team/reader", BASE))


def test_huge_values_are_clipped_in_messages() -> None:
    with pytest.raises(roles.RoleError) as error:
        roles.resolve("team/" + "x" * 300_000 + "/../admin", BASE)
    assert len(str(error.value)) < 400


def test_name_needs_a_base() -> None:
    with pytest.raises(roles.RoleError, match="account is not known"):
        roles.resolve("MyRole", None)
    assert roles.resolve("arn:aws:iam::123456789012:role/R", None).name == "R"


@pytest.mark.parametrize(
    ("caller", "prefix"),
    [
        ("arn:aws:sts::123456789012:assumed-role/node/i-123", "arn:aws:iam::123456789012:role/"),
        ("arn:aws-us-gov:iam::111122223333:user/admin", "arn:aws-us-gov:iam::111122223333:role/"),
        ("arn:aws-cn:sts::444455556666:assumed-role/r/s", "arn:aws-cn:iam::444455556666:role/"),
    ],
)
def test_base_from_caller_identity_is_partition_aware(caller: str, prefix: str) -> None:
    assert roles.BaseArn.from_caller_identity(caller).prefix == prefix


def test_base_arn_parse() -> None:
    assert roles.BaseArn.parse("arn:aws:iam::123456789012:role/").prefix == "arn:aws:iam::123456789012:role/"
    with pytest.raises(roles.RoleError):
        roles.BaseArn.parse("arn:aws:iam::1234:role/")


def test_keys_are_shared_per_role_and_distinct_per_pod() -> None:
    arn = "arn:aws:iam::123456789012:role/R"
    shared = roles.role_key(arn, None, 3600, "podiam")
    assert shared == roles.role_key(arn, None, 3600, "podiam")
    assert shared != roles.role_key(arn, "ext", 3600, "podiam")
    assert shared != roles.role_key(arn, None, 7200, "podiam")
    per_pod = roles.role_key(arn, None, 3600, "podiam", "uid-1")
    assert per_pod != roles.role_key(arn, None, 3600, "podiam", "uid-2")
    from metadata_proxy import wire
    import pydantic

    pydantic.TypeAdapter(wire.RoleKey).validate_python(shared)
    pydantic.TypeAdapter(wire.RoleKey).validate_python(per_pod)


def test_session_names_are_sanitised() -> None:
    assert roles.sanitize_session_name("team/app pod#1") == "team-app-pod-1"
    assert len(roles.sanitize_session_name("x" * 100)) == 64
    assert len(roles.sanitize_session_name("a")) == 2
