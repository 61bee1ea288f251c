"""Session fixtures every tier may use: moto STS behind the counting front."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import moto


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
