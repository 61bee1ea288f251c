"""cfssl and cfssljson, the tools of the guide's TLS chapter, built once with ``go install``.

Pinned to one release; the binaries live outside the repository, in
``${XDG_CACHE_HOME:-~/.cache}/podiam/cfssl/<version>/``, built under a file
lock so concurrent test sessions build once. A cold build takes about a
minute and a half on 2 cores.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

VERSION = "v1.6.5"
_MODULE = "github.com/cloudflare/cfssl"


def _directory() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "podiam" / "cfssl" / VERSION


def ensure_built() -> Path:
    directory = _directory()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((directory / tool).is_file() for tool in ("cfssl", "cfssljson")):
            result = subprocess.run(
                ["go", "install", f"{_MODULE}/cmd/cfssl@{VERSION}", f"{_MODULE}/cmd/cfssljson@{VERSION}"],
                env={**os.environ, "GOBIN": str(directory), "GOFLAGS": "-mod=mod"},
                capture_output=True, text=True, timeout=1200,
            )
            if result.returncode != 0:
                raise RuntimeError(f"building cfssl {VERSION} failed:\n{result.stderr[-4000:]}")
    return directory


class Cfssl:
    """Runs the guide's commands in ``workdir``: ``gencert -initca``, then ``gencert -ca`` per certificate."""

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def _gencert(self, args: list[str], csr: Mapping[str, object], bare: str) -> None:
        csr_file = self.workdir / f"{bare}.json"
        csr_file.write_text(json.dumps(csr))
        gencert = subprocess.run([str(self.bin_dir / "cfssl"), "gencert", *args, csr_file.name],
                                 cwd=self.workdir, capture_output=True, check=True, timeout=60)
        subprocess.run([str(self.bin_dir / "cfssljson"), "-bare", bare], input=gencert.stdout,
                       cwd=self.workdir, capture_output=True, check=True, timeout=60)

    def init_ca(self, csr: Mapping[str, object]) -> None:
        """``cfssl gencert -initca ca.json | cfssljson -bare ca``"""
        self._gencert(["-initca"], csr, "ca")

    def issue(self, bare: str, csr: Mapping[str, object]) -> None:
        """``cfssl gencert -ca=ca.pem -ca-key=ca-key.pem <bare>.json | cfssljson -bare <bare>``"""
        self._gencert(["-ca=ca.pem", "-ca-key=ca-key.pem"], csr, bare)

    def read(self, name: str) -> bytes:
        return (self.workdir / name).read_bytes()


# The guide's certificate requests, verbatim.
_NAMES: list[dict[str, str]] = [{"C": "UK", "L": "London", "O": "uSwitch", "OU": "WWW", "ST": "London"}]
GUIDE_CA: dict[str, object] = {"CN": "Kiam CA", "key": {"algo": "rsa", "size": 2048}, "names": _NAMES}
GUIDE_SERVER: dict[str, object] = {"hosts": ["kiam-server", "localhost", "kiam-server:443", "127.0.0.1", "::1"],
                "key": {"algo": "rsa", "size": 2048}, "names": _NAMES}
GUIDE_AGENT: dict[str, object] = {"CN": "Kiam Agent", "key": {"algo": "rsa", "size": 2048}, "names": _NAMES}
