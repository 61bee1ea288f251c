"""pytest fixtures: one real control plane per test session, started lazily.

``controlplane`` builds the binaries if they are missing (it never skips),
starts etcd + kube-apiserver + kube-controller-manager in a fresh temporary
folder and stops them and removes the folder at the end of the session, also
when tests fail, on Ctrl-C and on SIGTERM (turned into KeyboardInterrupt so
pytest tears its fixtures down). If the test runner is killed outright, the
processes die with it (PR_SET_PDEATHSIG) and the next session removes the
folder it left.

Set ``PODIAM_KEEP_CONTROLPLANE=1`` to keep the folder (logs, etcd data).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from localcluster import processes
from localcluster.controlplane import build
from localcluster.controlplane import cluster as _cluster
from localcluster.controlplane import controlplane as _cp
from localcluster.images import images as _images

_PREFIX = "podiam-controlplane-"
_OWNER_FILE = "owner.json"


def _sweep_orphaned_dirs() -> None:
    """Remove folders left by sessions that were killed (their owner is gone)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            owner = processes.Record.from_json(json.loads((directory / _OWNER_FILE).read_text()))
        except (OSError, ValueError, KeyError):
            continue  # not ours, or being created right now
        if not owner.alive():
            _cluster.stop_directory(directory)  # its nodes, if any, then its control plane
            _cp.remove_tree(directory)


_sigterm_handler_installed = False


def _install_sigterm_handler() -> None:
    global _sigterm_handler_installed
    if _sigterm_handler_installed:
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        _cp.stop_all()
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt("SIGTERM")

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
        _sigterm_handler_installed = True
    except ValueError:  # not the main thread (e.g. pytest run in a thread): atexit still applies
        pass


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


@contextlib.contextmanager
def _started(start: Callable[..., Any] = _cp.ControlPlane.start, **options: Any) -> Iterator[Any]:
    """What ``start(folder, **options)`` starts (a control plane, a cluster), in a fresh temporary folder,
    stopped and the folder removed on exit."""
    _sweep_orphaned_dirs()
    directory = Path(tempfile.mkdtemp(prefix=_PREFIX))
    keep = os.environ.get("PODIAM_KEEP_CONTROLPLANE") == "1"

    def remove() -> None:
        if keep:  # and no longer swept as a killed session's leftover
            (directory / _OWNER_FILE).unlink(missing_ok=True)
            sys.stderr.write(f"\nkept the control plane's folder: {directory}\n")
        else:
            _cp.remove_tree(directory)

    atexit.register(remove)
    me = processes.start_time(os.getpid())
    (directory / _OWNER_FILE).write_text(json.dumps({"name": "pytest", "pid": os.getpid(), "start_time": me}))
    _install_sigterm_handler()
    try:
        started = start(directory, **options)
    except BaseException:
        remove()
        atexit.unregister(remove)
        raise
    try:
        yield started
    finally:
        started.stop()
        remove()
        atexit.unregister(remove)


def started_cluster(**options: Any) -> contextlib.AbstractContextManager[_cluster.Cluster]:
    """A cluster with real nodes (``Cluster.start``'s options) in a fresh temporary folder, removed on exit.

    Needs root; the caller decides whether that is a skip or a failure.
    """
    return _started(_cluster.Cluster.start, **options)


@pytest.fixture(scope="session")
def controlplane(controlplane_binary: Path) -> Iterator[_cp.ControlPlane]:
    """The session's control plane: ``.kubeconfig``, ``.server``, ``.api()``, ``.kubectl()``, ...

    Shared by every test of the session: make your own namespace, clean up
    cluster-scoped objects you create.
    """
    with _started() as plane:
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
        yield lambda **options: stack.enter_context(_started(**options))


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
