"""Fixtures of the chart tier: helm (installed once by scripts/install-helm.sh)."""

from __future__ import annotations

import pytest

from localcluster import helm as _helm


@pytest.fixture(scope="session")
def helm() -> _helm.Helm:
    return _helm.Helm(_helm.install_helm())
