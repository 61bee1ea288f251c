"""Debian's prometheus package (promtool, prometheus) for the alert and dashboard tests, and the chart's rules as a file.

scripts/system-deps.sh installs the package when missing and root. Without
it the tests skip, except as root, where they fail: CI runs as root and
could always have installed it (tests/tiers.py: no silent skips).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from localcluster import helm as _helm

RELEASE, NAMESPACE = "podiam", "podiam-system"
OPERATOR_JOB, PROXY_JOB = f"{RELEASE}-operator-metrics", f"{RELEASE}-proxy-metrics"


def binary(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        message = f"{name} not found: Debian's prometheus package provides it (make system-deps installs it as root)"
        if os.geteuid() == 0:
            pytest.fail(message)
        pytest.skip(message)
    return Path(found)


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def rule_groups(helm: _helm.Helm, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The PrometheusRule the chart renders (prometheusRule enabled), as a Prometheus rule file's content."""
    merged = merge({"metrics": {"prometheusRule": {"enabled": True}}}, values or {})
    rendered = helm.template(RELEASE, NAMESPACE, values=merged)
    rule = rendered.get("PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def write_rules(helm: _helm.Helm, path: Path, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    groups = rule_groups(helm, values)
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return groups
