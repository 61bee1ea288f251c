"""Just enough of a Dockerfile reader to run an image's build stage outside Docker.

Base images cannot be pulled here, so the tests run the build stage's own
``RUN`` on the host, in a directory laid out as the stage's ``WORKDIR``,
with the stage's ``COPY`` sources copied from the repository: the install
command tested is the one in the Dockerfile, not a copy of it.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, f"cannot read FROM {rest!r}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], match.group(1))
            stages.append(Stage(base, match.group(2)))
        else:
            assert stages, f"{keyword} before FROM in {path}"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def copy_sources(copy_args: str) -> tuple[list[str], str]:
    """``COPY a b dest/`` -> (["a", "b"], "dest/"); flags such as --from are returned as-is in the sources."""
    parts = shlex.split(copy_args)
    return parts[:-1], parts[-1]
