"""A containerd root with podiam's images already imported and unpacked, shared by every node.

Importing the five images into a node's containerd unpacks about 1.3 GB of
layers (17 to 34 s per node on 2 cores): most of a cluster's start. So the
images are imported once into a root kept in the cache, and each node's
containerd root starts as a hard-linked copy of it (``cp -al``, about a
second): content blobs and unpacked layers are never written after they are
committed, so sharing their inodes is safe; the two bolt databases, which
containerd writes, are real copies. A node deleting its root only drops its
own links.

The prepared root is keyed by the images' digests and containerd's version,
and rebuilt when either changes (under a file lock, as the builds are).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from localcluster import buildlock, processes
from localcluster.images import images as podiam_images

# The files containerd writes in place; everything else under a root is written once.
WRITABLE = ("io.containerd.metadata.v1.bolt/meta.db", "io.containerd.snapshotter.v1.overlayfs/metadata.db")
_READY = "ready"


def _key(built: Mapping[str, podiam_images.Image]) -> str:
    version = subprocess.run(["containerd", "--version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(version.encode())
    for image in sorted(built.values(), key=lambda i: i.name):
        digest.update(f"{image.ref}\0".encode())  # a tag is a hash of the image's inputs
    return digest.hexdigest()[:16]


def prepared(built: Mapping[str, podiam_images.Image]) -> Path:
    """The cached root holding every image of ``built``, importing them first if needed."""
    base = podiam_images.cache_root() / "node-root"
    key = _key(built)
    folder = base / key
    if (folder / _READY).exists():
        return folder / "root"
    base.mkdir(parents=True, exist_ok=True)
    with buildlock.exclusive(base / ".lock"):
        if not (folder / _READY).exists():
            shutil.rmtree(folder, ignore_errors=True)
            _import(folder / "root", built)
            (folder / _READY).touch()
            for other in base.iterdir():  # roots of superseded images
                if other.is_dir() and other != folder:
                    shutil.rmtree(other, ignore_errors=True)
    return folder / "root"


def _import(root: Path, built: Mapping[str, podiam_images.Image]) -> None:
    """A throwaway containerd on ``root`` (its state and socket in a temporary folder) imports the images."""
    with tempfile.TemporaryDirectory(prefix="podiam-node-root-") as scratch:
        sock = Path(scratch) / "containerd.sock"
        config = Path(scratch) / "config.toml"
        config.write_text(f'''version = 2
root = "{root}"
state = "{scratch}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
''')
        daemon = processes.ManagedProcess("containerd-image-root", ["containerd", "--config", str(config)],
                                          Path(scratch) / "containerd.log", cwd=Path(scratch)).start()
        try:
            deadline = time.monotonic() + 30
            while not _connects(sock):
                if not daemon.alive() or time.monotonic() > deadline:
                    raise podiam_images.ImageError(f"containerd for the node root did not start:\n{daemon.log_tail()}")
                time.sleep(0.05)
            podiam_images.import_into(str(sock), built.values())
        finally:
            daemon.stop()


def copy_into(template: Path, target: Path) -> None:
    """``target`` becomes a containerd root holding the template's images: hard links, bolt files copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(template), str(target)], check=True, capture_output=True)
    for name in WRITABLE:
        linked = target / name
        if linked.exists():
            linked.unlink()
            shutil.copy2(template / name, linked)


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
