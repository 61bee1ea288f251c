"""helm, run on charts/podiam: lint, template, and the rendered objects as dicts."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "podiam"
INSTALL_SCRIPT = REPO / "scripts" / "install-helm.sh"


class HelmError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"helm {' '.join(argv)} exited {returncode}:\n{output}")
        self.returncode = returncode
        self.output = output


def install_helm() -> Path:
    """The helm binary scripts/install-helm.sh provides (installed once, then cached)."""
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/install-helm.sh failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclasses.dataclass(frozen=True)
class Rendered:
    text: str

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [doc for doc in yaml.safe_load_all(self.text) if doc]

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def kinds(self) -> list[str]:
        return [o["kind"] for o in self.objects]


def container(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def env_of(container_: Mapping[str, Any]) -> dict[str, Any]:
    """name -> value (a string) or valueFrom (a dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_.get("env", [])}


class Helm:
    def __init__(self, binary: Path, chart: Path = CHART) -> None:
        self.binary = binary
        self.chart = chart

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), *args]
        # No repository or registry configuration of the user's leaks in, and none is written.
        with tempfile.TemporaryDirectory(prefix="podiam-helm-") as home:
            env = {"HELM_CACHE_HOME": f"{home}/cache", "HELM_CONFIG_HOME": f"{home}/config",
                   "HELM_DATA_HOME": f"{home}/data", "PATH": "/usr/bin:/bin", "HOME": home}
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
        if check and result.returncode != 0:
            raise HelmError(args, result.returncode, result.stdout + result.stderr)
        return result

    def _values_args(self, values: Mapping[str, Any] | None, values_files: Sequence[Path]) -> Iterator[str]:
        for path in values_files:
            yield from ("-f", str(path))
        if values:
            # JSON is YAML: one file, no --set escaping rules.
            handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="podiam-values-", delete=False)
            with handle:
                json.dump(values, handle)
            yield from ("-f", handle.name)

    def template(
        self,
        release: str = "podiam",
        namespace: str = "podiam-system",
        values: Mapping[str, Any] | None = None,
        values_files: Sequence[Path] = (),
        *,
        include_crds: bool = False,
        check: bool = True,
    ) -> Rendered:
        args = list(self._values_args(values, values_files))
        try:
            result = self.run("template", release, str(self.chart), "--namespace", namespace,
                              *(["--include-crds"] if include_crds else []), *args, check=check)
        finally:
            _remove_temp_values(args)
        if result.returncode != 0:
            raise HelmError(["template"], result.returncode, result.stdout + result.stderr)
        return Rendered(result.stdout)

    def lint(self, values: Mapping[str, Any] | None = None, values_files: Sequence[Path] = ()) -> str:
        args = list(self._values_args(values, values_files))
        try:
            return self.run("lint", "--strict", str(self.chart), *args).stdout
        finally:
            _remove_temp_values(args)

    def notes(self, release: str = "podiam", namespace: str = "podiam-system", values: Mapping[str, Any] | None = None) -> str:
        """NOTES.txt as `helm install` prints it (client-side dry run: no cluster contacted)."""
        args = list(self._values_args(values, ()))
        try:
            out = self.run("install", release, str(self.chart), "--namespace", namespace, "--dry-run=client", *args).stdout
        finally:
            _remove_temp_values(args)
        return out.split("NOTES:", 1)[1]


def _remove_temp_values(args: Sequence[str]) -> None:
    for arg in args:
        if Path(arg).name.startswith("podiam-values-"):
            Path(arg).unlink(missing_ok=True)
