"""The fast-start image: fast_start/main.go (the AWS SDK for Go v2) built here, on python-base.

Built once and cached outside the repository, like localcluster/images (whose
python-base archive it starts from): the static binary from the Go toolchain
and the module proxy, then buildah (storage of its own) copies it into an
image written as an OCI archive that ``ctr images import`` names in full.
The tag hashes the Go sources, the Go version and python-base's ref.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from localcluster.images import images

SOURCE = Path(__file__).resolve().parent / "fast_start"
NAME = "bench-fast-start"
BINARY = "/usr/local/bin/fast-start"
GO_FLAGS = ("-trimpath", "-ldflags=-s -w")


def cache_root() -> Path:
    explicit = os.environ.get("PODIAM_BENCH_GUIDE_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "podiam" / "bench-guide"


def _go_version() -> str:
    return subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def planned(base: images.Image) -> images.Image:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\0".join((_go_version(), base.ref, *GO_FLAGS)).encode())
    tag = digest.hexdigest()[:12]
    return images.Image(NAME, f"{images.REGISTRY}/{NAME}", tag, cache_root() / "archives" / f"{tag}.tar")


def ensure_built(base: images.Image) -> images.Image:
    """The image (building it if its archive is missing), FROM ``base`` (python-base's archive)."""
    image = planned(base)
    if image.archive.is_file():
        return image
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if image.archive.is_file():
            return image
        work = root / "tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        _run(["go", "build", *GO_FLAGS, "-o", str(work / "fast-start"), "."], cwd=SOURCE,
             env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"})
        container = _buildah("from", "--quiet", f"oci-archive:{base.archive}").strip()
        try:
            _buildah("copy", "--chmod", "0755", container, str(work / "fast-start"), BINARY)
            # Not root: it needs nothing but the network.
            _buildah("config", "--entrypoint", f'["{BINARY}"]', "--cmd", "", "--user", "65534:65534", container)
            _buildah("commit", "--quiet", container, image.ref)
        finally:
            _buildah("rm", container)
        image.archive.parent.mkdir(parents=True, exist_ok=True)
        partial = image.archive.with_suffix(".partial")
        _buildah("push", "--quiet", image.ref, f"oci-archive:{partial}:{image.ref}")
        partial.rename(image.archive)
        for old in image.archive.parent.glob("*.tar"):
            if old != image.archive:
                old.unlink()
        _buildah("rmi", "--all", "--force")  # the archive is what nodes import; storage would only grow
        shutil.rmtree(work)
    return image


def _buildah(*args: str) -> str:
    root = cache_root()
    (root / "buildah-tmp").mkdir(exist_ok=True)
    return _run(["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                 "--storage-driver", "overlay", *args], env={**os.environ, "TMPDIR": str(root / "buildah-tmp")})


def _run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise images.ImageError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
