"""Fault injection and hostile input on the real stack (marker ``fault``).

Each module gets its own :class:`localcluster.stack.Stack` (``stack``) since
these tests kill operators, proxies and API servers; each test uses its own
namespace (``ns``). The security invariants are judged by one checker
(:mod:`localcluster.invariants`), shared with the soak (``bench/soak``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import invariants, moto
from localcluster import stack as stacks

_names = itertools.count()


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("fault-stack"), nodes=2)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def ns(stack: stacks.Stack, request: pytest.FixtureRequest) -> str:
    """A fresh namespace that permits every role."""
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"f{next(_names)}-{slug}"
    stack.create_namespace(name, ".*")
    return name


@pytest.fixture
def checker(stack: stacks.Stack) -> invariants.Checker:
    return invariants.Checker(stack.sts.issued_keys)


@pytest.fixture(autouse=True)
def _sts_faults_cleared(sts: moto.StsFront) -> Iterator[None]:
    sts.clear_faults()
    yield
    sts.clear_faults()
