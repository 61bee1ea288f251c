"""``make demo`` end to end: the guide's result on the screen, a non-zero exit otherwise, nothing left behind."""

from __future__ import annotations

import re

import pytest

from demo import guide, pods
from tests.demo.conftest import chain_present, leftovers, run_demo

pytestmark = pytest.mark.integration

ARN = re.compile(r"arn:aws:sts::123456789012:assumed-role/KiamTesterRole/[\w+=,.@-]+")


def _netns_possible() -> bool:
    return pods.netns_unavailable() is None


def _assert_guide_result(output: str) -> None:
    identity = ARN.search(output)
    assert identity, output
    refused = output.find(guide.NO_CREDENTIALS, identity.end())
    assert refused > 0, f"no {guide.NO_CREDENTIALS!r} after the assumed role:\n{output}"
    assert "every step behaved as the guide says" in output
    # Secrets never reach the screen: only masked forms of the credentials document.
    assert '"SecretAccessKey": "(masked)"' in output and '"Token": "(masked)"' in output


def test_demo_runs_the_guide_in_the_best_mode_this_machine_allows() -> None:
    """As root with iptables: the pod in its own network namespace, plain 169.254.169.254; else the fallback."""
    expected = "netns" if _netns_possible() else "loopback"
    chain_before = chain_present()
    run = run_demo()
    assert run.returncode == 0, run.output
    assert re.search(rf"^    {expected}: ", run.output, re.MULTILINE), run.output
    _assert_guide_result(run.output)
    if expected == "netns":
        assert "GET http://169.254.169.254/latest/meta-data/iam/security-credentials/" in run.output
        assert "AWS_EC2_METADATA_SERVICE_ENDPOINT=" not in run.output.split("==> 8.")[1]
    assert leftovers(run, chain_before) == []


def test_loopback_fallback_runs_the_guide() -> None:
    if not _netns_possible():
        pytest.skip("the default mode is the loopback fallback here, tested above")
    run = run_demo("--mode", "loopback")
    assert run.returncode == 0, run.output
    assert re.search(r"^    loopback: ", run.output, re.MULTILINE)
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.11:" in run.output
    _assert_guide_result(run.output)
    assert leftovers(run, chain_present()) == []


def test_ctrl_c_stops_and_removes_everything() -> None:
    """SIGINT to the demo's process group (a terminal's Ctrl-C) once the operator, proxies and pod network are up."""
    chain_before = chain_present()
    run = run_demo(interrupt_at="==> 6.")
    assert run.returncode == 130, run.output
    assert "interrupted: stopping everything the demo started" in run.output
    assert "every step behaved" not in run.output
    assert leftovers(run, chain_before) == []
