"""Which test tiers ran, said at the end of every session; a test that skips as root fails it.

The tiers are the markers in pyproject.toml. CI runs as root, where every
test can run: each skip in the suite is for want of root (the ``node`` and
``e2e`` tiers, the iptables fault test, the capability test, the demo's real
nodes) or of a tool ``make system-deps`` installs. A skip as root would hide
that such a test did not run, so the session fails instead, naming it
(pytest's own exit code 5, no tests collected, is a failure already).
"""

from __future__ import annotations

import collections
import os

import pytest

TIERS = ("unit", "integration", "node", "chart", "fault", "e2e")

_tier_of: dict[str, str] = {}
_outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
_seconds: collections.Counter[str] = collections.Counter()  # set-up, call and tear-down, per tier
_skipped_as_root: list[str] = []


def _tiers(item: pytest.Item) -> list[str]:
    return [tier for tier in TIERS if item.get_closest_marker(tier) is not None]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: every collected test is checked, whatever runs
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test carries exactly one tier marker, from its module's ``pytestmark`` (a ``pytestmark`` in a
    conftest.py marks nothing): a test without one would silently drop out of ``-m <tier>`` runs."""
    wrong = []
    for item in items:
        tiers = _tiers(item)
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: {', '.join(tiers) or 'no tier marker'}")
        _tier_of[item.nodeid] = tiers[0] if tiers else "other"
    if wrong:
        raise pytest.UsageError(f"each test needs exactly one tier marker ({', '.join(TIERS)}):\n  " + "\n  ".join(wrong[:20]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = _tier_of.get(report.nodeid, "other")
    _seconds[tier] += report.duration
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        _outcomes[tier][outcome] += 1
        if report.skipped and not hasattr(report, "wasxfail") and os.geteuid() == 0:  # an xfail is reported as skipped
            _skipped_as_root.append(f"{report.nodeid}: {report.longrepr}")
    elif report.when == "teardown" and report.failed:
        _outcomes[tier]["teardown errors"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section("tiers that ran")
    for tier in sorted(_outcomes, key=lambda t: (TIERS.index(t) if t in TIERS else len(TIERS), t)):
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(_outcomes[tier].items()))
        terminalreporter.write_line(f"{tier:<12} {counts} in {_seconds[tier]:.0f} s")
    for tier in TIERS:
        if tier not in _outcomes:
            terminalreporter.write_line(f"{tier:<12} did not run")
    if _skipped_as_root:
        terminalreporter.write_line("tests skipped although running as root (a failure):", red=True)
        for line in _skipped_as_root:
            terminalreporter.write_line(f"  {line}", red=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_as_root and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
