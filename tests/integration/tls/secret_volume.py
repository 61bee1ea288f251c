"""A Secret mounted as a volume, updated as the kubelet does it (there is no kubelet here).

The kubelet's AtomicWriter lays a Secret volume out as::

    <dir>/..2026_11_28_14_20_21.123456789/tls.crt   the current payload
    <dir>/..data -> ..2026_11_28_14_20_21.123456789
    <dir>/tls.crt -> ..data/tls.crt                  what the container opens

and publishes an update by writing a new timestamped folder, pointing a
``..data_tmp`` symlink at it and renaming that over ``..data`` (one atomic
swap of all files at once), then removing the old folder. This stand-in
polls the Secret through the real API server (the kubelet's sync takes up to
a minute plus its cache TTL; here ``period`` seconds) and does the same.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from localcluster.controlplane import client


class SecretVolume:
    def __init__(self, api: Any, namespace: str, name: str, directory: Path, period: float = 0.5) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.directory = directory
        self.period = period
        self.resource_version: str | None = None
        self.updates = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"volume-{name}", daemon=True)
        self.error: BaseException | None = None

    def path(self, key: str) -> Path:
        return self.directory / key

    def sync(self) -> bool:
        """One kubelet sync; True when the volume changed."""
        try:
            secret = self.api("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}")
        except client.ApiError as error:
            if error.status == 404:
                return False  # a pod would wait in ContainerCreating; a mounted volume keeps its files
            raise
        version = secret["metadata"]["resourceVersion"]
        if version == self.resource_version:
            return False
        self._publish({key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()})
        self.resource_version = version
        self.updates += 1
        return True

    def _publish(self, payload: dict[str, bytes]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
        target = self.directory / stamp
        target.mkdir()
        for key, value in payload.items():
            (target / key).write_bytes(value)
            (target / key).chmod(0o644)
        data = self.directory / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        temporary = self.directory / "..data_tmp"
        if temporary.is_symlink():
            temporary.unlink()
        temporary.symlink_to(stamp)
        os.rename(temporary, data)
        for key in payload:
            visible = self.directory / key
            if not visible.is_symlink():
                visible.symlink_to(Path("..data") / key)
        if old is not None:
            shutil.rmtree(self.directory / old, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sync()
            except BaseException as error:  # surfaced by stop()
                self.error = error
                return

    def start(self) -> SecretVolume:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None:
            raise self.error
