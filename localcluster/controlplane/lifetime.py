"""A control plane or a cluster in a fresh temporary folder, for as long as this Python process needs it.

``started(...)`` / ``started_cluster(...)`` start it, and stop it and remove
the folder on exit, also on an exception, on Ctrl-C and on SIGTERM (turned
into KeyboardInterrupt so the caller's ``finally`` blocks run). If this
process is killed outright, its processes die with it (PR_SET_PDEATHSIG) and
the next ``started`` removes the folder it left (an ``owner.json`` names the
owning process by PID and start time). The pytest fixtures
(tests/support/cluster_plugin.py) and ``make demo``'s real nodes use it.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from localcluster import processes
from localcluster.controlplane import cluster as _cluster
from localcluster.controlplane import controlplane as _cp

PREFIX = "podiam-controlplane-"
OWNER_FILE = "owner.json"


def sweep_orphaned_dirs() -> None:
    """Remove folders left by processes that were killed (their owner is gone)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner = processes.Record.from_json(json.loads((directory / OWNER_FILE).read_text()))
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


@contextlib.contextmanager
def started(start: Callable[..., Any] = _cp.ControlPlane.start, **options: Any) -> Iterator[Any]:
    """What ``start(folder, **options)`` starts (a control plane by default, a cluster), in a fresh
    temporary folder, stopped and the folder removed on exit."""
    sweep_orphaned_dirs()
    directory = Path(tempfile.mkdtemp(prefix=PREFIX))
    keep = os.environ.get("PODIAM_KEEP_CONTROLPLANE") == "1"

    def remove() -> None:
        if keep:  # and no longer swept as a killed process's leftover
            (directory / OWNER_FILE).unlink(missing_ok=True)
            sys.stderr.write(f"\nkept the control plane's folder: {directory}\n")
        else:
            _cp.remove_tree(directory)

    atexit.register(remove)
    me = processes.start_time(os.getpid())
    (directory / OWNER_FILE).write_text(json.dumps({"name": Path(sys.argv[0]).name, "pid": os.getpid(), "start_time": me}))
    _install_sigterm_handler()
    try:
        thing = start(directory, **options)
    except BaseException:
        remove()
        atexit.unregister(remove)
        raise
    try:
        yield thing
    finally:
        thing.stop()
        remove()
        atexit.unregister(remove)


def started_cluster(**options: Any) -> contextlib.AbstractContextManager[_cluster.Cluster]:
    """A cluster with real nodes (``Cluster.start``'s options) in a fresh temporary folder, removed on exit.

    Needs root; the caller decides whether that is a skip or a failure.
    """
    return started(_cluster.Cluster.start, **options)
