"""Build (once) the container images the real nodes run, and load them into a containerd.

No registry is reachable and there is no Docker daemon, so every image starts
from Debian packages or from source:

* ``python-base``: debootstrap bookworm (minbase) with python3, venv and pip,
  plus the host's extra CA certificates (egress goes through a
  TLS-intercepting proxy, so pip inside a build needs them);
* ``pause``: the pod sandbox, pause.c of the pinned k8s.io/kubernetes, static;
* ``podiam-proxy``, ``podiam-operator``: the repository's Dockerfiles, unmodified,
  FROM python-base;
* ``aws-cli``: the guide's ``aws-iam-tester`` pod (``aws-cli.Dockerfile`` here).

buildah builds them daemonless (chroot isolation, host network) into storage
of its own under the cache, and writes each as an OCI archive that
``ctr images import`` loads under its full name ``localhost/podiam/NAME:TAG``.
A tag hashes everything that decides the image (for a Dockerfile: the file,
every file its .dockerignore lets into the context, the base image's tag), so
a changed input gives a new tag and an unchanged one reuses the archive.

The cache is ``${PODIAM_IMAGES_CACHE:-${XDG_CACHE_HOME:-~/.cache}/podiam/images}``:
``storage/`` and ``run/`` (buildah's), ``archives/NAME/TAG.tar``, ``tmp/``. A file
lock keeps concurrent builders (several test sessions, ``make`` and pytest)
from building twice.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from localcluster import buildlock
from localcluster.controlplane import build as controlplane_build
from localcluster.images import context

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REGISTRY = "localhost/podiam"
NAMES = ("python-base", "pause", "podiam-proxy", "podiam-operator", "aws-cli")
# Built FROM python-base with buildah bud: the Dockerfile and its context (None: an empty one).
DOCKERFILES: Mapping[str, tuple[Path, Path | None]] = {
    "podiam-proxy": (REPO / "Dockerfile.proxy", REPO),
    "podiam-operator": (REPO / "Dockerfile.operator", REPO),
    "aws-cli": (HERE / "aws-cli.Dockerfile", None),
}

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# python-is-python3: the Dockerfiles run `python -m pip`.
PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
# What debian:bookworm-slim leaves out; also written as dpkg path-excludes into
# the image, so the Dockerfiles' own apt-get installs stay slim too.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/groff/*", "/usr/share/lintian/*", "/usr/share/linda/*")
DPKG_INCLUDES = ("/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias")
# Left by debootstrap and of no use in an image: package lists and .debs (about
# 100 MB), logs, and the host's own resolv.conf and hostname (runtimes mount theirs).
CLEARED = ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/cache/debconf/*-old",
           "var/log/*.log", "var/log/apt/*", "etc/resolv.conf", "etc/hostname")
PYTHON_BASE_CONTAINERFILE = """\
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8
CMD ["python3"]
"""
# As kubernetes/build/pause/Makefile and Dockerfile build it.
PAUSE_CFLAGS = ("-Os", "-Wall", "-Werror", "-static")
PAUSE_CONTAINERFILE = """\
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
"""
# buildah run needs chroot isolation here: crun and runc fail with "cgroups in
# hybrid mode not supported". Host network: egress works there and nothing
# else has to be set up. --pull never: the base image is local.
BUD_FLAGS = ("--isolation", "chroot", "--network", "host", "--layers", "--force-rm", "--pull=never")

_TAG_LENGTH = 12
_HEARTBEAT_SECONDS = 15.0
_TAIL_LINES = 60


class ImageError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Image:
    name: str
    repository: str  # localhost/podiam/NAME, for helm's image.repository
    tag: str
    archive: Path  # an OCI archive; `ctr images import` names the image `ref`
    build_seconds: float | None = None  # how long this call took to build it; None if it was built already

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


def cache_root() -> Path:
    explicit = os.environ.get("PODIAM_IMAGES_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "podiam" / "images"


def plan() -> dict[str, Image]:
    """Every image with the tag its inputs give now; builds nothing."""
    base = _image("python-base", _python_base_inputs())
    images = [base, _image("pause", _pause_inputs())]
    for name, (dockerfile, build_context) in DOCKERFILES.items():
        images.append(_image(name, _dockerfile_inputs(dockerfile, build_context, base)))
    return {image.name: image for image in images}


def ensure_built(progress: bool = True) -> dict[str, Image]:
    """Every image (by name, in build order), building those whose tag has no archive yet."""
    planned = plan()
    if all(image.archive.is_file() for image in planned.values()):
        return planned
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    built = dict(planned)
    waiting = (lambda: _say(f"another process is building images in {root}; waiting for it")) if progress else None
    with buildlock.exclusive(root / ".lock", waiting), _Progress(progress) as reporter:
        _fresh_directory(root / "tmp")  # what a killed build left
        _remove_containers()
        for name, image in planned.items():
            if not image.archive.is_file():  # another builder may have built it while we waited
                built[name] = _build(image, planned, reporter)
    return built


def import_into(containerd_address: str, images: Iterable[Image], namespace: str = "k8s.io") -> None:
    """Loads the images into containerd (unpacked for its default snapshotter) under their full refs.

    An image already there under the same ref with the same manifest digest is
    skipped; afterwards every ref must be there with its archive's digest.
    """
    wanted = {image.ref: (image.archive, _manifest_digest(image.archive)) for image in images}
    present = _containerd_images(containerd_address, namespace)
    for ref, (archive, digest) in wanted.items():
        if present.get(ref) != digest:
            _ctr(containerd_address, namespace, "images", "import", str(archive))
    present = _containerd_images(containerd_address, namespace)
    missing = sorted(ref for ref, (_, digest) in wanted.items() if present.get(ref) != digest)
    if missing:
        raise ImageError(f"after importing, containerd at {containerd_address} (namespace {namespace}) lacks "
                         f"{', '.join(missing)}; it has: {', '.join(sorted(present)) or 'nothing'}")


# Tags


def _image(name: str, inputs: Iterable[tuple[str, bytes]]) -> Image:
    digest = hashlib.sha256()
    for label, content in inputs:
        digest.update(label.encode() + b"\0" + content + b"\0")
    tag = digest.hexdigest()[:_TAG_LENGTH]
    return Image(name, f"{REGISTRY}/{name}", tag, cache_root() / "archives" / name / f"{tag}.tar")


def _python_base_inputs() -> Iterator[tuple[str, bytes]]:
    yield "recipe", repr((SUITE, MIRROR, "minbase", PACKAGES, DPKG_EXCLUDES, DPKG_INCLUDES, CLEARED)).encode()
    yield "Containerfile", PYTHON_BASE_CONTAINERFILE.encode()
    for path in _host_ca_files():
        yield f"ca/{path.relative_to(HOST_CA_DIR)}", path.read_bytes()


def _pause_inputs() -> Iterator[tuple[str, bytes]]:
    # pause.c is whatever the pinned module holds, so its version stands for it.
    yield "recipe", repr((controlplane_build.kube_version(), PAUSE_CFLAGS)).encode()
    yield "Containerfile", PAUSE_CONTAINERFILE.encode()


def _dockerfile_inputs(dockerfile: Path, build_context: Path | None, base: Image) -> Iterator[tuple[str, bytes]]:
    yield "recipe", repr((BUD_FLAGS, base.ref)).encode()
    yield "Dockerfile", dockerfile.read_bytes()
    if build_context is not None:
        yield from _context_inputs(build_context)


def _context_inputs(root: Path) -> Iterator[tuple[str, bytes]]:
    for relative in context.files(root):
        path = root / relative
        if path.is_symlink():
            yield f"link/{relative}", os.readlink(path).encode()
        else:
            mode = path.stat().st_mode & 0o7777  # COPY keeps it, and buildah's layer cache keys on it
            yield f"file/{relative}/{mode:o}", path.read_bytes()


def _host_ca_files() -> list[Path]:
    return sorted(p for p in HOST_CA_DIR.rglob("*") if p.is_file()) if HOST_CA_DIR.is_dir() else []


# Building


def _build(image: Image, planned: Mapping[str, Image], progress: _Progress) -> Image:
    progress.begin(image.name)
    progress.say(f"building {image.name}")
    work = cache_root() / "tmp" / image.name
    _fresh_directory(work)
    try:
        if image.name == "python-base":
            _build_python_base(image, work, progress)
        elif image.name == "pause":
            _build_pause(image, work, progress)
        else:
            image = _build_from_dockerfile(image.name, planned["python-base"], work, progress)
        _export(image, progress)
    finally:
        _remove(work)
        _remove_containers()
    _forget_superseded(image, progress)
    seconds = time.monotonic() - progress.start
    progress.say(f"built {image.ref} in {_duration(seconds)} ({image.archive.stat().st_size / 2**20:.1f} MiB archive)")
    return dataclasses.replace(image, build_seconds=round(seconds, 1))


def _build_from_dockerfile(name: str, base: Image, work: Path, progress: _Progress) -> Image:
    """Builds from a copy of the context and the Dockerfile; the tag hashes the copy (the tree may have changed)."""
    dockerfile, build_context = DOCKERFILES[name]
    snapshot = work / "context"
    if build_context is None:
        snapshot.mkdir()
    else:
        context.copy(build_context, snapshot)
    shutil.copy2(dockerfile, work / dockerfile.name)
    image = _image(name, _dockerfile_inputs(work / dockerfile.name, snapshot, base))
    _ensure_stored(base, progress)
    _bud(image, work / dockerfile.name, snapshot, progress, {"PYTHON_IMAGE": base.ref})
    return image


def _build_python_base(image: Image, work: Path, progress: _Progress) -> None:
    rootfs = work / "rootfs"
    progress.phase = "running debootstrap (download, unpack, configure)"
    progress.say("debootstrap takes under a minute on a quiet machine, a few when the cores are busy")
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), MIRROR],
         progress)
    _add_host_ca_certificates(rootfs, progress)
    _slim(rootfs)
    progress.phase = "packing the root file system"
    # A tar, because ADD keeps its owners and modes; COPY of a folder would make everything root's.
    _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(rootfs), "-cf",
          str(work / "rootfs.tar"), "."], progress)
    _remove(rootfs)
    (work / "Containerfile").write_text(PYTHON_BASE_CONTAINERFILE)
    _bud(image, work / "Containerfile", work, progress)


def _add_host_ca_certificates(rootfs: Path, progress: _Progress) -> None:
    """The host's extra CAs, trusted inside: pip and apt in image builds pass the same TLS-intercepting egress."""
    for path in _host_ca_files():
        target = rootfs / "usr/local/share/ca-certificates" / path.relative_to(HOST_CA_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    progress.phase = "updating the image's CA certificates"
    # A clean environment: the host's (TMPDIR, PIP_*, ...) means nothing inside.
    _run(["chroot", str(rootfs), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin", "update-ca-certificates"], progress)


def _slim(rootfs: Path) -> None:
    """Leaves out what debian:bookworm-slim does, now and (dpkg path-excludes) in later apt-get installs."""
    (rootfs / "etc/dpkg/dpkg.cfg.d/podiam-slim").write_text(
        "".join(f"path-exclude {p}\n" for p in DPKG_EXCLUDES) + "".join(f"path-include {p}\n" for p in DPKG_INCLUDES))
    for path in list((rootfs / "usr/share").rglob("*")):
        if path.is_symlink() or path.is_file():
            name = "/" + path.relative_to(rootfs).as_posix()
            # dpkg's own matching: fnmatch with "*" crossing "/".
            if _matches_any(name, DPKG_EXCLUDES) and not _matches_any(name, DPKG_INCLUDES):
                path.unlink()
    for pattern in CLEARED:
        for path in rootfs.glob(pattern):
            _remove(path)


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _build_pause(image: Image, work: Path, progress: _Progress) -> None:
    progress.phase = "compiling pause.c"
    module = _kubernetes_module()
    makefile = module / "build/pause/Makefile"
    match = re.search(r"^TAG \?= (\S+)$", makefile.read_text(), re.MULTILINE)
    if match is None:
        raise ImageError(f"no `TAG ?= ...` line in {makefile}: how upstream versions pause has changed")
    # Upstream's VERSION is v$(TAG)-$(git describe); the module's version is the describe here.
    version = f"v{match.group(1)}-{controlplane_build.kube_version()}"
    _run(["gcc", *PAUSE_CFLAGS, f"-DVERSION={version}", "-o", str(work / "pause"),
          str(module / "build/pause/linux/pause.c")], progress)
    (work / "Containerfile").write_text(PAUSE_CONTAINERFILE)
    _bud(image, work / "Containerfile", work, progress)


def _kubernetes_module() -> Path:
    version = controlplane_build.kube_version()
    download = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
                              cwd=controlplane_build.GO_MODULE, capture_output=True, text=True)
    if download.returncode != 0:
        raise ImageError(f"cannot fetch k8s.io/kubernetes {version}:\n{download.stdout}{download.stderr}")
    return Path(json.loads(download.stdout)["Dir"])


def _bud(image: Image, containerfile: Path, build_context: Path, progress: _Progress,
         build_args: Mapping[str, str] | None = None) -> None:
    progress.phase = f"building {containerfile.name} (buildah bud)"
    progress.say(f"buildah bud -f {containerfile.name} -t {image.ref}")
    args = [arg for key, value in (build_args or {}).items() for arg in ("--build-arg", f"{key}={value}")]
    _run(_buildah("bud", *BUD_FLAGS, *args, "-f", str(containerfile), "-t", image.ref, str(build_context)), progress)


def _ensure_stored(image: Image, progress: _Progress) -> None:
    """Puts a built image back into buildah's storage from its archive (when someone removed storage/)."""
    if image.ref in _stored_refs():
        return
    progress.phase = f"loading {image.ref} from its archive"
    _run(_buildah("pull", "--quiet", f"oci-archive:{image.archive}"), progress)
    if image.ref not in _stored_refs():
        raise ImageError(f"loading {image.archive} did not give {image.ref}")


def _export(image: Image, progress: _Progress) -> None:
    progress.phase = "writing the archive (compressing layers)"
    image.archive.parent.mkdir(parents=True, exist_ok=True)
    partial = image.archive.with_name(f".{image.archive.name}.{os.getpid()}.partial")
    try:
        # The ref inside (org.opencontainers.image.ref.name) is what `ctr images import` names the image.
        _run(_buildah("push", "--quiet", image.ref, f"oci-archive:{partial}:{image.ref}"), progress)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(image.archive)  # last, atomically: the archive's presence means "built"


def _forget_superseded(image: Image, progress: _Progress) -> None:
    """Removes archives and stored images of the same name under other tags (and what a killed export left)."""
    for other in image.archive.parent.iterdir():
        if other != image.archive:
            other.unlink()
    superseded = [ref for ref in _stored_refs() if ref.startswith(f"{image.repository}:") and ref != image.ref]
    if superseded:
        progress.phase = "removing superseded images"
        _run(_buildah("rmi", *superseded), progress)


def _remove_containers() -> None:
    """Removes (and unmounts) the working containers an interrupted or killed bud leaves behind.

    The storage is ours alone and the build lock is held, so every container in it is a leftover.
    Never raises: it runs while another error may be on its way out.
    """
    subprocess.run(_buildah("rm", "--all"), stdin=subprocess.DEVNULL, capture_output=True)


def _stored_refs() -> set[str]:
    listing = subprocess.run(_buildah("images", "--format", "{{.Name}}:{{.Tag}}"), capture_output=True, text=True)
    if listing.returncode != 0:
        raise ImageError(f"buildah images failed:\n{listing.stderr}")
    return set(listing.stdout.split())


def _buildah(*args: str) -> list[str]:
    root = cache_root()
    # Storage of its own: nothing in /var/lib/containers, and `rm -rf` of the cache is a clean slate. buildah
    # stages layers and blobs in TMPDIR (/var/tmp by default): in the cache too, where a killed build's are removed.
    return ["env", f"TMPDIR={root / 'tmp'}", "buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"),
            "--storage-driver", "overlay", *args]


def _run(argv: list[str], progress: _Progress) -> None:
    """Runs ``argv``, echoing its output as progress; raises with the output's tail if it fails."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
        start_new_session=True,  # so an interrupted build stops the command's children (RUN steps, dpkg) too
    )
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            tail.append(line)
            progress.say(line)
        code = process.wait()
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if code != 0:
        raise ImageError(f"{' '.join(argv)} failed with exit code {code}:\n" + "\n".join(tail))


# Files and folders


def _fresh_directory(path: Path) -> None:
    _remove(path)
    path.mkdir(parents=True)


def _remove(path: Path) -> None:
    """Removes a file or a tree; first unmounts what a killed debootstrap left mounted in it (its /proc, /sys)."""
    for mount_point in _mounts_under(path):
        subprocess.run(["umount", "--lazy", mount_point], check=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with space, tab, newline and backslash as octal escapes.
        point = re.sub(r"\\([0-7]{3})", lambda escape: chr(int(escape.group(1), 8)), line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


# Loading into containerd


def _manifest_digest(archive: Path) -> str:
    """The manifest digest in an OCI archive's index: what containerd records for the image it imports."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImageError(f"{archive} has no index.json: not an OCI archive")
        return str(json.load(member)["manifests"][0]["digest"])


def _containerd_images(address: str, namespace: str) -> dict[str, str]:
    """ref -> manifest digest of the images in the namespace."""
    rows = _ctr(address, namespace, "images", "ls").splitlines()[1:]  # after the header
    return {fields[0]: fields[2] for fields in (row.split() for row in rows) if len(fields) >= 3}


def _ctr(address: str, namespace: str, *args: str) -> str:
    argv = ["ctr", "--address", address, "--namespace", namespace, *args]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"{' '.join(argv)} failed with exit code {result.returncode}:\n{result.stderr.strip()}")
    return result.stdout


# Locking and progress


def _say(message: str) -> None:
    print(f"[images build] {message}", file=sys.stderr, flush=True)


class _Progress:
    """Prints what the build is doing, and a heartbeat when it prints nothing (debootstrap's dpkg, pip, compressing)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.image = ""
        self.start = time.monotonic()
        self.phase = "starting"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def begin(self, image: str) -> None:
        self.image = image
        self.start = time.monotonic()
        self.phase = "starting"

    def say(self, message: str) -> None:
        if self.enabled:
            _say(f"{_elapsed(self.start)} {self.image}: {message}")

    def _beat(self) -> None:
        while not self._done.wait(_HEARTBEAT_SECONDS):
            self.say(f"still {self.phase}")


def _elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def _duration(seconds: float) -> str:
    return f"{int(seconds) // 60} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.1f} s"
