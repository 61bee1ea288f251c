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
