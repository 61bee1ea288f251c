"""Tests of the control plane harness itself (localcluster/controlplane): that it is
a real cluster as far as podiam cares — kubectl, OpenAPI, garbage collection,
namespace deletion, CRD validation, RBAC, pod status — and that it cleans up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane


@pytest.fixture
def namespace(controlplane: ControlPlane) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted afterwards."""
    name = f"h-{uuid.uuid4().hex[:8]}"
    controlplane.create_namespace(name)
    yield name
    controlplane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
