"""Dockerfile.proxy and Dockerfile.operator, tested without Docker.

Base images cannot be pulled here, so: the build stage's own COPY and RUN run
on the host into a fresh virtual environment (the very install command of
each image), the result is checked (entry point, what is and is not
installed), the wheel's contents are checked, and the Dockerfiles are read
for what the images promise (pinned base, multi-stage, non-root, no build
tools, iptables only in the proxy image). Needs PyPI (or pip's cache) for
hatchling and the dependencies, as `make venv` does.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart import dockerfile
from localcluster import helm as _helm

pytestmark = pytest.mark.chart

REPO = _helm.REPO
VENV_BIN = Path(sys.executable).parent
# In the image, /wheels and /opt/venv are the build stage's; here, temporary folders.
IMAGE_PATHS = ("/wheels", "/opt/venv")
OPERATOR_ONLY = ("kopf", "aiobotocore", "botocore", "kubernetes-asyncio", "kubernetes_asyncio")


def _dockerignored(relative: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        parts = relative.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(c, body) or fnmatch.fnmatch(c, body.replace("**/", "*/")) for c in candidates) or (
            body.startswith("**/") and any(fnmatch.fnmatch(p, body[3:]) for p in parts)
        ):
            ignored = not negate
    return ignored


def _context_files() -> list[str]:
    """The files `docker build .` sends, by .dockerignore."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    return [f for f in tracked if (REPO / f).is_file() and not _dockerignored(f, patterns)]


def run_build_stage(name: str, workdir: Path) -> Path:
    """Runs Dockerfile.<name>'s build stage on the host; returns the virtual environment it made."""
    _, stages = dockerfile.parse(REPO / f"Dockerfile.{name}")
    build = stages[0]
    (work,) = build.all("WORKDIR")
    sent = set(_context_files())
    src = workdir / work.lstrip("/")
    for copy in build.all("COPY"):
        sources, dest = dockerfile.copy_sources(copy)
        for source in sources:
            origin = REPO / source
            target = src / dest
            if origin.is_dir():
                for path in origin.rglob("*"):
                    relative = path.relative_to(REPO).as_posix()
                    if path.is_file() and relative in sent:
                        out = target / path.relative_to(origin)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, out)
            else:
                assert source in sent, f"{source} is COPY'd but .dockerignore leaves it out of the build context"
                out = target / origin.name if dest.endswith("/") or dest == "./" else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, out)
    mapping = {path: str(workdir / path.strip("/").replace("/", "-")) for path in IMAGE_PATHS}
    for run in build.all("RUN"):
        command = run
        for image_path, host_path in mapping.items():
            command = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?![\w-])", host_path, command)
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        result = subprocess.run(["sh", "-c", command], cwd=src, env=env, capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, f"RUN {run}\nfailed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return Path(mapping["/opt/venv"])


def _distributions(venv: Path) -> set[str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"],
                         capture_output=True, text=True, check=True).stdout
    return {name.strip().lower().replace("_", "-") for name in out.split()}


@pytest.fixture(scope="module")
def proxy_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("image-proxy")
    yield run_build_stage("proxy", directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def operator_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("image-operator")
    yield run_build_stage("operator", directory)
    shutil.rmtree(directory, ignore_errors=True)


def test_proxy_install_step_yields_a_working_proxy_without_the_operators_dependencies(proxy_venv: Path) -> None:
    result = subprocess.run([str(proxy_venv / "bin" / "podiam-proxy"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--host-interface" in result.stdout and "--iptables" in result.stdout
    installed = _distributions(proxy_venv)
    assert {"podiam", "aiohttp", "pydantic", "pydantic-settings", "prometheus-client", "uvloop", "cryptography"} <= installed
    assert "pyjwt" not in installed  # tokens are checked without it (cryptography only for EC keys)
    for name in OPERATOR_ONLY:
        assert name.replace("_", "-") not in installed, f"{name} is in the proxy image's environment"
    for module in ("kopf", "aiobotocore", "kubernetes_asyncio"):
        probe = subprocess.run([str(proxy_venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr
    # Nothing to build or install with in the final environment.
    assert not {"pip", "setuptools", "wheel", "hatchling"} & installed


def test_operator_install_step_yields_a_working_operator(operator_venv: Path) -> None:
    result = subprocess.run([str(operator_venv / "bin" / "podiam-operator"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--session-duration" in result.stdout and "--assume-role-arn" in result.stdout
    installed = _distributions(operator_venv)
    assert {"podiam", "kopf", "kubernetes-asyncio", "aiobotocore", "cryptography"} <= installed
    assert not {"pip", "setuptools", "wheel", "hatchling", "pytest", "moto"} & installed
    # The operator's TLS tool is there too (`python -m podiam_operator.tls check`).
    tls = subprocess.run([str(operator_venv / "bin" / "python"), "-m", "podiam_operator.tls", "--help"], capture_output=True, text=True, timeout=60)
    assert tls.returncode == 0, tls.stderr


def test_wheel_contents(proxy_venv: Path) -> None:
    (wheel,) = (proxy_venv.parent / "wheels").glob("podiam-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("podiam_operator/__init__.py", "podiam_operator/py.typed", "podiam_operator/__main__.py",
                     "podiam_operator/tls/__init__.py", "metadata_proxy/__init__.py", "metadata_proxy/py.typed",
                     "metadata_proxy/wire.py", "metadata_proxy/__main__.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    assert not any(n.startswith("operator/") for n in names), "operator/ is a folder, not a package: it must not be in the wheel"
    assert not any(n.startswith(("tests/", "charts/", "bench/", "demo/")) for n in names)
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "podiam-operator = podiam_operator.__main__:main" in entry_points
    assert "podiam-proxy = metadata_proxy.__main__:main" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "Provides-Extra: proxy" in metadata and "Provides-Extra: operator" in metadata


# -- what the Dockerfiles say ------------------------------------------------------


@pytest.mark.parametrize("name", ["proxy", "operator"])
def test_dockerfile_shape(name: str) -> None:
    args, stages = dockerfile.parse(REPO / f"Dockerfile.{name}")
    assert len(stages) == 2, "multi-stage: a build stage and a final stage"
    build, final = stages
    # Pinned to a patch release of a slim Debian image, the same in both stages.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", build.base), build.base
    assert final.base == build.base
    # The build stage installs through the script the test runs; the final stage copies the venv only.
    (run,) = build.all("RUN")
    assert f"scripts/install-image-venv.sh {name} /wheels /opt/venv" in run
    assert final.all("COPY") == ["--from=build /opt/venv /opt/venv"]
    final_text = " ".join(args for _, args in final.instructions)
    assert "pip install" not in final_text and "pip wheel" not in final_text
    for tool in ("build-essential", "gcc", "python3-dev", "git", "curl", "wget"):
        assert not re.search(rf"\b{re.escape(tool)}\b", final_text), f"{tool} in the final image"
    assert final.all("USER") == ["10001:10001"]
    assert final.all("ENTRYPOINT") == [f'["/opt/venv/bin/podiam-{name}"]']
    # No setuid or setgid programs left to escalate through.
    assert "-perm /6000 -exec chmod a-s" in final_text


def test_proxy_image_installs_iptables_with_the_file_capability_and_the_operator_image_does_not() -> None:
    _, (_, proxy_final) = dockerfile.parse(REPO / "Dockerfile.proxy")
    _, (_, operator_final) = dockerfile.parse(REPO / "Dockerfile.operator")
    proxy_run = " ".join(proxy_final.all("RUN"))
    assert "apt-get install -y --no-install-recommends iptables libcap2-bin" in proxy_run
    assert "setcap cap_net_admin+ep /usr/sbin/xtables-nft-multi" in proxy_run
    assert "apt-get purge -y --auto-remove libcap2-bin" in proxy_run
    assert "ln -s /usr/sbin/xtables-legacy-multi /opt/podiam/iptables-legacy/iptables" in proxy_run
    assert "apt-get" not in " ".join(operator_final.all("RUN"))


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    sent = _context_files()
    assert "pyproject.toml" in sent and "metadata_proxy/wire.py" in sent and "scripts/install-image-venv.sh" in sent
    assert any(f.startswith("operator/podiam_operator/") for f in sent)
    assert not any(f.startswith(("tests/", "charts/", ".venv/", "bench/", ".git/")) for f in sent)
    assert not any("__pycache__" in f for f in sent)


# -- the proxy's capability design, on this kernel -------------------------------------

# The proxy's iptables module needs the standard library only; user 10001
# needs an interpreter it may execute (the test venv's may live under /root).
_SYSTEM_PYTHON = Path("/usr/bin/python3")
_ISOLATION = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "setpriv", "setcap", "xtables-nft-multi"))
    or not _SYSTEM_PYTHON.exists(),
    reason="needs root, unshare, setpriv, setcap, iptables and /usr/bin/python3 (scripts/system-deps.sh)",
)

_INSTALL_RULE = (
    "from metadata_proxy import _iptables; "
    "_iptables.install('cali+', '10.0.0.1', 8181); "
    "print(len(_iptables.installed()))"
)


def _as_proxy_user(directory: Path, no_new_privs: bool) -> subprocess.CompletedProcess[str]:
    """The proxy's code, as the chart runs it: user 10001, bounding set NET_ADMIN only, in a fresh network namespace."""
    argv = [
        "unshare", "--net", "--",
        "setpriv", "--reuid", "10001", "--regid", "10001", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all,+net_admin",
        *(["--no-new-privs"] if no_new_privs else []),
        "env", f"PATH={directory}:/usr/bin:/bin", f"PYTHONPATH={REPO}", "PYTHONDONTWRITEBYTECODE=1",
        str(_SYSTEM_PYTHON), "-c", _INSTALL_RULE,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@_ISOLATION
def test_non_root_proxy_manages_iptables_through_the_file_capability_alone() -> None:
    """Why the chart's nft security context is user 10001 + NET_ADMIN + allowPrivilegeEscalation: true.

    The image gives xtables-nft-multi cap_net_admin as a file capability.
    The proxy process itself holds no capability; iptables gets NET_ADMIN
    when it runs, provided no_new_privs is off (allowPrivilegeEscalation:
    false sets it, and the kernel then ignores file capabilities).
    """
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="podiam-caps-"))
    try:
        directory.chmod(0o755)
        binary = directory / "iptables"
        shutil.copy2("/usr/sbin/xtables-nft-multi", binary)  # dispatches on its name: iptables (nft)
        subprocess.run(["setcap", "cap_net_admin+ep", str(binary)], check=True)
        allowed = _as_proxy_user(directory, no_new_privs=False)
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.strip() == "1"  # the DNAT rule, in the namespace's own nat table
        refused = _as_proxy_user(directory, no_new_privs=True)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
        binary.unlink()
        shutil.copy2("/usr/sbin/xtables-nft-multi", binary)  # no file capability: the process alone cannot
        bare = _as_proxy_user(directory, no_new_privs=False)
        assert bare.returncode != 0 and "Permission denied" in bare.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)
