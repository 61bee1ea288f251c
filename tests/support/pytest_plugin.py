"""Session fixtures every tier may use: moto STS behind the counting front."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import moto
from localcluster import stack as stacks


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[moto.MotoServer]:
    server = moto.MotoServer(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sts(moto_server: moto.MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[moto.StsFront]:
    """The STS endpoint to give the operator (``sts.url``); faults cleared and counts reset per test."""
    front = moto.StsFront(tmp_path_factory.mktemp("sts_front"), moto_server.url).start()
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture
def sts_clean(sts: moto.StsFront) -> Iterator[moto.StsFront]:
    sts.clear_faults()
    sts.reset_stats()
    yield sts
    sts.clear_faults()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(autouse=True)
def _dump_stack_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test that ran the full stack shows the tails of its operators' and proxies' logs."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "stack" in request.fixturenames:
        running: stacks.Stack = request.getfixturevalue("stack")
        for process in running.operators:
            print(f"--- {process.name} log (tail) ---\n{process.log()[-8000:]}")
        for node in running.nodes:
            print(f"--- proxy {node.name} log (tail) ---\n{node.proxy.log()[-3000:]}")
