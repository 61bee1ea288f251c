"""Build (once) and find the multi-call binary of the local cluster.

The Go module in ``go/`` pins k8s.io/kubernetes and go.etcd.io/etcd/server/v3;
``go build`` turns it into one static binary that runs kube-apiserver,
kube-controller-manager, kube-scheduler, etcd or kubelet depending on its
first argument.

The kubelet is built from a patched copy of the pinned k8s.io/kubernetes
module (see :data:`PATCHES`): unpatched, it either rewrites host-wide kernel
sysctls or refuses to start, and the host's sysctls must never change.

The binary lives outside the repository, in
``${PODIAM_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/podiam/controlplane}/<key>/``
where the key hashes everything that decides the result (go.mod, go.sum, the
main package, the build flags, the Go version), so a fresh clone reuses a
previous build and a version bump builds anew. A file lock keeps concurrent
builders (several test sessions, ``make`` and pytest) from building twice.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from localcluster import buildlock

GO_MODULE = Path(__file__).resolve().parent / "go"
MAIN_PACKAGE = "./cmd/controlplane"
BINARY_NAME = "controlplane"
COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kubelet")


@dataclasses.dataclass(frozen=True)
class Patch:
    """One exact text replacement in a file of the k8s.io/kubernetes module, and why."""

    path: str
    old: str
    new: str
    why: str


PATCHES = (
    Patch(
        "pkg/kubelet/cm/container_manager_linux.go",
        "\tb := KernelTunableModify\n",
        "\tb := KernelTunableWarn // podiam: never write the host's sysctls\n",
        "With protectKernelDefaults=false the kubelet writes vm.overcommit_memory, kernel.panic and "
        "kernel.panic_on_oops host-wide (those sysctls are not per network namespace); with true it refuses "
        "to start unless they already hold its values. A test cluster must leave the host as it found it, "
        "so the kubelet only logs what it would have changed.",
    ),
)

# Go 1.27 turns the jsonv2 experiment on by default, and a kube-apiserver built
# with it serves OpenAPI documents kubectl cannot read ("failed to download
# openapi"); nojsonv2 keeps encoding/json v1 whatever Go builds this.
_GOEXPERIMENT = "nojsonv2"
# One package at a time per core: a k8s build peaks near 2 GB with -p 2.
_PARALLELISM = "2"
_HEARTBEAT_SECONDS = 15.0


class BuildError(RuntimeError):
    pass


def kube_version() -> str:
    """The pinned k8s.io/kubernetes version, read from go.mod (the one source of truth)."""
    return _required_version("k8s.io/kubernetes")


def etcd_version() -> str:
    return _required_version("go.etcd.io/etcd/server/v3")


def _required_version(module: str) -> str:
    text = (GO_MODULE / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise BuildError(f"{module} is not required in {GO_MODULE / 'go.mod'}")
    return match.group(1)


def _ldflags() -> str:
    # Without these, the binaries report v0.0.0-master and kubectl warns about
    # an unparseable server version; -s -w drop symbols (about a third smaller).
    version = kube_version()
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _build_args(output: Path, modfile: Path | None = None) -> list[str]:
    return [
        "go", "build", "-v", "-p", _PARALLELISM, "-trimpath", "-buildvcs=false",
        *([f"-modfile={modfile}"] if modfile else []),
        "-ldflags", _ldflags(), "-o", str(output), MAIN_PACKAGE,
    ]


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    experiments = [e for e in env.get("GOEXPERIMENT", "").split(",") if e and "jsonv2" not in e]
    env["GOEXPERIMENT"] = ",".join([*experiments, _GOEXPERIMENT])
    env["CGO_ENABLED"] = "0"  # static, as upstream builds these
    env.setdefault("GOFLAGS", "")
    return env


@functools.lru_cache(maxsize=1)
def _go_version() -> str:
    if shutil.which("go") is None:
        raise BuildError("the `go` command is not on PATH; install Go >= 1.26 (scripts/system-deps.sh)")
    result = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True, cwd=GO_MODULE)
    return result.stdout.strip()


def cache_root() -> Path:
    explicit = os.environ.get("PODIAM_CONTROLPLANE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "podiam" / "controlplane"


def cache_key() -> str:
    digest = hashlib.sha256()
    for path in sorted([GO_MODULE / "go.mod", GO_MODULE / "go.sum", *GO_MODULE.joinpath("cmd").rglob("*.go")]):
        digest.update(path.relative_to(GO_MODULE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join(_build_args(Path("OUT"))).encode())
    for patch in PATCHES:
        digest.update(repr((patch.path, patch.old, patch.new)).encode())
    digest.update(_build_env()["GOEXPERIMENT"].encode())
    digest.update(_go_version().encode())
    return f"{kube_version()}-{digest.hexdigest()[:12]}"


def binary_dir() -> Path:
    return cache_root() / cache_key()


def binary_path() -> Path:
    return binary_dir() / BINARY_NAME


def ensure_built(progress: bool = True) -> Path:
    """The binary's path; builds it first if this key has none yet."""
    target = binary_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    waiting = (lambda: _say(f"another process is building into {target.parent}; waiting for it")) if progress else None
    with buildlock.exclusive(target.parent / ".lock", waiting):
        if not target.is_file():  # another builder may have finished while we waited
            _build(target, progress)
            _prune_other_versions(target.parent)
    return target


def _prune_other_versions(keep: Path) -> None:
    """Remove builds of other pins (130 MiB each); a checkout that still needs one rebuilds it."""
    for other in keep.parent.iterdir():
        if other == keep or not other.is_dir() or not (other / BINARY_NAME).is_file():
            continue  # not a finished build (maybe one in progress)
        shutil.rmtree(other, ignore_errors=True)


def _say(message: str) -> None:
    print(f"[controlplane build] {message}", file=sys.stderr, flush=True)


class _Progress:
    """Prints what the build is doing, and a heartbeat when it prints nothing (module downloads, linking)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.monotonic()
        self.phase = "starting"
        self.compiled = 0
        self.total: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def say(self, message: str) -> None:
        if self.enabled:
            _say(f"{_elapsed(self.start)} {message}")

    def _beat(self) -> None:
        while not self._done.wait(_HEARTBEAT_SECONDS):
            self.say(f"still {self.phase} ({self.compiled}/{self.total or '?'} packages compiled; linking comes last)")


def _count_packages(env: dict[str, str], modfile: Path, progress: _Progress) -> int:
    """How many packages the binary has (for the progress counter); downloads the modules first if needed."""
    progress.phase = "resolving and downloading modules"
    with tempfile.TemporaryFile("w+") as listing:
        process = subprocess.Popen(["go", "list", f"-modfile={modfile}", "-deps", MAIN_PACKAGE], cwd=GO_MODULE, env=env,
                                   stdout=listing, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        errors = []
        for raw in process.stderr:  # "go: downloading MODULE VERSION" on a fresh machine
            errors.append(raw.rstrip())
            progress.say(raw.rstrip())
        if process.wait() != 0:
            raise BuildError(f"`go list -deps {MAIN_PACKAGE}` failed in {GO_MODULE}:\n" + "\n".join(errors[-60:]))
        listing.seek(0)
        return len(listing.read().split())


def _patched_modfile(env: dict[str, str], workdir: Path, progress: _Progress) -> Path:
    """A go.mod beside a patched copy of k8s.io/kubernetes in ``workdir``, replacing the pinned module with it.

    ``go build -overlay`` refuses files in the module cache, and go.mod in the
    repository must not name a machine's path, so the build gets a modfile of
    its own: the repository's go.mod plus one replace line.
    """
    progress.phase = "copying and patching k8s.io/kubernetes"
    version = kube_version()
    download = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], cwd=GO_MODULE,
                              env=env, capture_output=True, text=True)
    if download.returncode != 0:
        raise BuildError(f"cannot fetch k8s.io/kubernetes {version}:\n{download.stdout}{download.stderr}")
    source = workdir / "kubernetes"
    shutil.rmtree(source, ignore_errors=True)
    # The module cache is read-only; the copy must be writable to patch and to remove.
    shutil.copytree(json.loads(download.stdout)["Dir"], source, symlinks=True, copy_function=shutil.copyfile)
    for patch in PATCHES:
        path = source / patch.path
        text = path.read_text()
        if text.count(patch.old) != 1:
            raise BuildError(f"patch for {patch.path} no longer applies to k8s.io/kubernetes {version} "
                             f"(expected exactly one {patch.old.strip()!r}); review PATCHES in {__file__}")
        path.write_text(text.replace(patch.old, patch.new))
        progress.say(f"patched {patch.path}: {patch.why}")
    modfile = workdir / "go.mod"
    modfile.write_text((GO_MODULE / "go.mod").read_text() + f"\nreplace k8s.io/kubernetes => {source}\n")
    shutil.copyfile(GO_MODULE / "go.sum", workdir / "go.sum")
    return modfile


def _build(target: Path, progress_enabled: bool) -> None:
    env = _build_env()
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    with _Progress(progress_enabled) as progress:
        progress.say(f"building {' + '.join(COMMANDS)} (k8s.io/kubernetes {kube_version()}, "
                     f"etcd {etcd_version()}, {_go_version()}, GOEXPERIMENT={env['GOEXPERIMENT']}) into {target}")
        progress.say("a cold build takes 5 to 8 minutes on 2 cores and needs about 3 GB of memory; later runs reuse it")
        # A stable path (the build lock is held), so Go's build cache serves rebuilds.
        workdir = target.with_name(".build")
        lines: list[str] = []
        process: subprocess.Popen[str] | None = None
        try:
            modfile = _patched_modfile(env, workdir, progress)
            progress.total = _count_packages(env, modfile, progress)
            progress.phase = "compiling"
            process = subprocess.Popen(
                _build_args(partial, modfile), cwd=GO_MODULE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, start_new_session=True,  # so an interrupted build stops go's compile and link children too
            )
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip()
                lines.append(line)
                if line and " " not in line:  # a package name; anything else is a note or an error
                    progress.compiled += 1
                    line = f"[{progress.compiled}/{progress.total}] {line}"
                progress.say(line)
            code = process.wait()
        except BaseException:
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            partial.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)  # the patched copy (124 MB) served this build only
    if code != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join(lines[-60:])
        raise BuildError(f"go build failed with exit code {code} in {GO_MODULE}:\n{tail}")
    seconds = time.monotonic() - progress.start
    size = partial.stat().st_size
    info = {
        "kube_version": kube_version(), "etcd_version": etcd_version(), "go": _go_version(),
        "build_seconds": round(seconds, 1), "packages_compiled": progress.compiled, "size_bytes": size,
    }
    target.with_name("build-info.json").write_text(json.dumps(info, indent=2) + "\n")
    for command in COMMANDS:  # symlinks so `ps` and logs name the real command
        link = target.with_name(command)
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)
    # Last, atomically: the binary's presence is what tells others the build is complete.
    partial.rename(target)
    progress.say(f"built {target} ({size / 2**20:.0f} MiB)")


def _elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def bump(version: str) -> list[str]:
    """Pin k8s.io/kubernetes ``version`` and replace each staging module it requires with its release.

    k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver,
    ...) at v0.0.0 and points them at folders of its own repository; that does
    not carry over to a dependent module, so go.mod here replaces each with its
    published release (v0.37.3 for v1.37.3). Returns the staging modules.
    go.etcd.io/etcd/server/v3 stays as pinned: keep it at the etcd release
    whose client k8s.io/kubernetes requires.
    """
    match = re.fullmatch(r"v1\.(\d+\.\d+)", version)
    if match is None:
        raise BuildError(f"{version!r} is not a k8s.io/kubernetes release like v1.37.2")
    staging = f"v0.{match.group(1)}"
    env = _build_env()
    download = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], cwd=GO_MODULE, env=env,
                              capture_output=True, text=True)
    if download.returncode != 0:
        raise BuildError(f"cannot fetch k8s.io/kubernetes {version}:\n{download.stdout}{download.stderr}")
    upstream = Path(json.loads(download.stdout)["GoMod"]).read_text()
    modules = sorted(set(re.findall(r"^\s+(k8s\.io/[\w.-]+) v0\.0\.0\s*$", upstream, re.MULTILINE)))
    go_mod = GO_MODULE / "go.mod"
    text = re.sub(r"\nreplace \(\n.*?\n\)\n", "\n", go_mod.read_text(), flags=re.DOTALL)
    for module in modules:  # their require lines too, so go.mod reads consistently
        text = re.sub(rf"^(\t{re.escape(module)}) v\S+", rf"\g<1> {staging}", text, flags=re.MULTILINE)
    block = "".join(f"\t{module} => {module} {staging}\n" for module in modules)
    go_mod.write_text(text.rstrip("\n") + f"\n\nreplace (\n{block})\n")
    for argv in (["go", "mod", "edit", f"-require=k8s.io/kubernetes@{version}"], ["go", "mod", "tidy"]):
        result = subprocess.run(argv, cwd=GO_MODULE, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"{' '.join(argv)} failed:\n{result.stderr}")
    return modules
