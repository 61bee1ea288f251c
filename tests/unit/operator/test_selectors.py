from __future__ import annotations

from typing import Any

import pytest

from podiam_operator._core import selectors

pytestmark = pytest.mark.unit


def matches(selector: Any, labels: dict[str, str]) -> bool:
    return selectors.parse(selector).matches(labels)


def test_match_labels_and_expressions() -> None:
    selector = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "team", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    }
    good = {"app": "web", "tier": "a", "team": "x"}
    assert matches(selector, good)
    assert not matches(selector, {**good, "app": "db"})
    assert not matches(selector, {**good, "tier": "c"})
    assert not matches(selector, {**good, "env": "prod"})
    assert matches(selector, {**good, "env": "dev"})
    assert not matches(selector, {k: v for k, v in good.items() if k != "team"})
    assert not matches(selector, {**good, "legacy": ""})


def test_empty_selector_selects_everything() -> None:
    assert matches({}, {"a": "b"})
    assert matches({}, {})


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("app=web", "must be an object"),
        ({"matchLabel": {"a": "b"}}, "unknown fields"),
        ({"matchLabels": {"bad key!": "x"}}, "not a valid label key"),
        ({"matchLabels": {"a": "bad value!"}}, "not a valid label value"),
        ({"matchExpressions": [{"key": "a", "operator": "Is", "values": ["x"]}]}, "operator"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "needs at least one value"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "takes no values"),
        ({"matchExpressions": "a in (x)"}, "must be a list"),
    ],
)
def test_invalid_selectors_say_what_is_wrong(selector: Any, message: str) -> None:
    with pytest.raises(selectors.SelectorError, match=message):
        selectors.parse(selector)
