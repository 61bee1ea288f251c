"""Integration tests of the operator: real control plane, moto STS, real proxies and operator processes.

One :class:`localcluster.stack.Stack` per module (``stack``); each test uses
its own namespace so tests do not see each other's pods.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import moto
from localcluster import stack as stacks

_names = itertools.count()


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    running = stacks.Stack(controlplane, sts, workdir, nodes=2)
    try:
        running.start()
        yield running
    except BaseException:
        running.print_operator_logs()
        raise
    finally:
        running.stop()


@pytest.fixture
def ns(stack: stacks.Stack, request: pytest.FixtureRequest) -> str:
    """A fresh namespace that permits every role."""
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"t{next(_names)}-{slug}"
    stack.create_namespace(name, ".*")
    return name
