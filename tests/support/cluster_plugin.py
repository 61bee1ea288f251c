"""pytest fixtures: one real control plane per test session, started lazily.

``controlplane`` builds the binaries if they are missing (it never skips),
starts etcd + kube-apiserver + kube-controller-manager in a fresh temporary
folder and stops them and removes the folder at the end of the session, also
when tests fail, on Ctrl-C and on SIGTERM (localcluster.controlplane.lifetime,
which ``make demo`` uses too). Set ``PODIAM_KEEP_CONTROLPLANE=1`` to keep the
folder (logs, etcd data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import build, lifetime
from localcluster.controlplane import controlplane as _cp
from localcluster.images import images as _images


def _build_uncaptured(config: pytest.Config) -> Path:
    capture: Any = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        return build.ensure_built()
    with capture.global_and_fixture_disabled():
        return build.ensure_built()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Build before the first test when any selected test needs the control plane.

    A cold build takes minutes: inside a fixture it would count against the
    first test's timeout (pytest-timeout), so it happens here instead.
    """
    if session.config.option.collectonly:
        return
    if not any("controlplane_binary" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    try:
        if not build.binary_path().is_file():
            _build_uncaptured(session.config)
    except build.BuildError as error:
        pytest.exit(f"building the control plane failed: {error}", returncode=1)
    if any("podiam_images" in getattr(item, "fixturenames", ()) for item in session.items):
        capture: Any = session.config.pluginmanager.getplugin("capturemanager")
        try:
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                _images.ensure_built(progress=True)
        except _images.ImageError as error:
            pytest.exit(f"building the images failed: {error}", returncode=1)


@pytest.fixture(scope="session")
def controlplane_binary(request: pytest.FixtureRequest) -> Path:
    """The built multi-call binary (normally built already by ``pytest_runtestloop``)."""
    if build.binary_path().is_file():
        return build.binary_path()
    return _build_uncaptured(request.config)


@pytest.fixture(scope="session")
def controlplane(controlplane_binary: Path) -> Iterator[_cp.ControlPlane]:
    """The session's control plane: ``.kubeconfig``, ``.server``, ``.api()``, ``.kubectl()``, ...

    Shared by every test of the session: make your own namespace, clean up
    cluster-scoped objects you create.
    """
    with lifetime.started() as plane:
        yield plane


@pytest.fixture(scope="session")
def podiam_images(controlplane_binary: Path) -> dict[str, Any]:
    """podiam's images and the test images (built before the first test that needs them, see above)."""
    return dict(_images.ensure_built(progress=True))


@pytest.fixture
def make_controlplane(controlplane_binary: Path) -> Iterator[Callable[..., _cp.ControlPlane]]:
    """A factory of private control planes (for tests that break one), stopped after the test.

    ``make_controlplane(controllers=...)`` takes ``ControlPlane.start``'s options.
    """
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(lifetime.started(**options))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a control plane shows the tail of its components' logs."""
    report = yield
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    plane = funcargs.get("controlplane")
    if report.failed and isinstance(plane, _cp.ControlPlane):
        _attach_logs(report, plane)
    return report


def _attach_logs(report: pytest.TestReport, plane: _cp.ControlPlane) -> None:
    for name in ("kube-apiserver", "kube-controller-manager", "etcd"):
        log = plane.dir / f"{name}.log"
        try:
            tail = log.read_text(errors="replace")[-3000:]
        except OSError:
            continue
        report.sections.append((f"control plane: tail of {log}", tail))
