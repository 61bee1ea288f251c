"""Kubernetes LabelSelectors (matchLabels / matchExpressions): validation and matching."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_KEY_RE = re.compile(r"^(?:(?P<prefix>[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/)?(?P<name>" + _NAME + r")$")
_VALUE_RE = re.compile(r"^(" + _NAME + r")?$")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclasses.dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        # An empty selector selects everything, as in Kubernetes.
        return all(requirement.matches(labels) for requirement in self.requirements)


def check_key(key: Any, where: str) -> str:
    """A label or annotation key (``[prefix/]name``), or SelectorError."""
    if not isinstance(key, str) or _KEY_RE.match(key) is None or len(key.rpartition("/")[2]) > 63 or len(key.partition("/")[0]) > 253:
        raise SelectorError(f"{where}: {key!r} is not a valid label key")
    return key


def _check_value(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or _VALUE_RE.match(value) is None:
        raise SelectorError(f"{where}: {value!r} is not a valid label value")
    return value


def parse(raw: Any) -> Selector:
    """A selector from a binding's ``spec.podSelector``; SelectorError says what is wrong."""
    if not isinstance(raw, Mapping):
        raise SelectorError("podSelector must be an object with matchLabels and/or matchExpressions")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"podSelector has unknown fields: {', '.join(sorted(unknown))}")
    requirements: list[Requirement] = []
    match_labels = raw.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError("podSelector.matchLabels must be a map of label keys to values")
    for key, value in match_labels.items():
        where = f"podSelector.matchLabels[{key!r}]"
        requirements.append(Requirement(check_key(key, where), "In", frozenset([_check_value(value, where)])))
    expressions = raw.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SelectorError("podSelector.matchExpressions must be a list")
    for index, expression in enumerate(expressions):
        where = f"podSelector.matchExpressions[{index}]"
        if not isinstance(expression, Mapping):
            raise SelectorError(f"{where} must be an object with key, operator and values")
        key = check_key(expression.get("key"), where)
        operator = expression.get("operator")
        if operator not in _OPERATORS:
            raise SelectorError(f"{where}: operator {operator!r} is not one of {', '.join(_OPERATORS)}")
        values = expression.get("values") or []
        if not isinstance(values, list):
            raise SelectorError(f"{where}: values must be a list")
        if operator in ("In", "NotIn") and not values:
            raise SelectorError(f"{where}: {operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{where}: {operator} takes no values")
        requirements.append(Requirement(key, operator, frozenset(_check_value(v, where) for v in values)))
    return Selector(tuple(requirements))
