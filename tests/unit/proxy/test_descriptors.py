"""The descriptor limit the proxy sets itself, and each port's share of it."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from metadata_proxy import _descriptors
from tests.unit.proxy.conftest import settings

pytestmark = pytest.mark.unit


def limit_under(soft: int, hard: int, wanted: int) -> str:
    """What set_limit(wanted) gives a fresh process the runtime started with soft:hard."""
    done = subprocess.run(
        ["prlimit", f"--nofile={soft}:{hard}", "--", sys.executable, "-c",
         f"import resource; from metadata_proxy import _descriptors; print(_descriptors.set_limit({wanted}), "
         "resource.getrlimit(resource.RLIMIT_NOFILE))"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return done.stdout.strip()


def test_the_soft_limit_is_raised_up_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # what this runner may give a child: no more
    assert hard >= 8192, "the test needs a hard limit of at least 8192"
    assert limit_under(1024, hard, 8192) == f"8192 (8192, {hard})"  # a runtime's 1024 soft limit (containerd 2), raised
    assert limit_under(1024, 4096, 8192) == "4096 (4096, 4096)"  # as far as the hard limit goes
    assert limit_under(hard, hard, 8192) == f"8192 (8192, {hard})"  # --open-files is what the proxy uses, also lower


def test_the_pods_ports_get_what_the_others_and_the_process_leave() -> None:
    caps = _descriptors.shares(1024, settings())
    assert (caps["control"].total, caps["health"].total) == (_descriptors.CONTROL_TOTAL, _descriptors.HEALTH_TOTAL)
    assert 1024 - _descriptors.RESERVED == 752
    assert (caps["metadata"].total, caps["credentials"].total) == (564, 188)  # three quarters, a quarter
    assert sum(c.total for c in caps.values()) < 1024
    assert (caps["metadata"].per_source, caps["metadata"].read_timeout) == (128, 5.0)
    assert caps["credentials"].per_source == 128
    alone = _descriptors.shares(1024, settings(container_credentials=False))
    assert "credentials" not in alone and alone["metadata"].total == 752
    assert _descriptors.shares(8192, settings(max_connections=1000))["metadata"].total == 1000


def test_a_limit_too_low_or_a_cap_above_it_stops_the_start() -> None:
    with pytest.raises(ValueError, match="leaves the metadata port 40 connections"):
        _descriptors.shares(_descriptors.RESERVED + 40, settings())
    with pytest.raises(ValueError, match=r"--max-connections 600 is more than a descriptor limit of 1024 leaves \(564\)"):
        _descriptors.shares(1024, settings(max_connections=600))
