"""The files a build context sends, by its ``.dockerignore``, with Docker's own matching rules.

An image's tag hashes these files, so a file the build can see must never
be missed (a stale image) and a file it cannot see should not count (a
needless rebuild). The rules are moby's patternmatcher's, which buildah's
copy follows: patterns are cleaned paths relative to the context; ``*`` and
``?`` stay within one path element, ``**`` spans any number; a pattern that
matches a parent directory matches everything under it; ``!`` re-includes;
the last matching pattern wins.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import shutil
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Pattern:
    text: str
    regex: re.Pattern[str]
    include: bool  # a "!" pattern

    def matches(self, relative: str) -> bool:
        """Whether the pattern matches the path or one of its parent directories."""
        if self.regex.fullmatch(relative):
            return True
        parts = relative.split("/")[:-1]
        return any(self.regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts)))

    def may_match_under(self, directory: str) -> bool:
        """Whether some path below ``directory`` might match: False only when a literal element differs."""
        for mine, theirs in zip(self.text.split("/"), directory.split("/")):
            if re.search(r"[*?\[\\]", mine):
                return True
            if mine != theirs:
                return False
        return True


def parse(text: str) -> list[Pattern]:
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        body = posixpath.normpath(line[1:].strip() if include else line).lstrip("/")
        patterns.append(Pattern(body, re.compile(_regex(body)), include))
    return patterns


def _regex(pattern: str) -> str:
    regex, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # "**/" also matches no directory at all
                i += 1
            regex += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            regex += re.escape(pattern[i])
        elif char in "[]":  # a character class, passed on as moby does
            regex += char
        else:
            regex += re.escape(char)
        i += 1
    return regex


def excluded(relative: str, patterns: list[Pattern]) -> bool:
    result = False
    for pattern in patterns:
        if pattern.include != result:
            continue  # cannot change the outcome: an exclusion of an excluded path, an inclusion of an included one
        if pattern.matches(relative):
            result = not pattern.include
    return result


def files(root: Path) -> list[str]:
    """Relative paths (sorted) of the files and symlinks under ``root`` that its .dockerignore lets in."""
    ignore = root / ".dockerignore"
    patterns = parse(ignore.read_text()) if ignore.is_file() else []
    inclusions = [p for p in patterns if p.include]
    found = []
    for directory, subdirectories, names in os.walk(root):
        here = Path(directory).relative_to(root).as_posix()
        prefix = "" if here == "." else f"{here}/"
        kept = []
        for name in subdirectories:
            relative = prefix + name
            if os.path.islink(os.path.join(directory, name)):
                names.append(name)  # a symlink is sent as a link, not followed
            elif not excluded(relative, patterns) or any(p.may_match_under(relative) for p in inclusions):
                kept.append(name)  # else nothing below it can be let in (.git, .venv): not walked
        subdirectories[:] = kept
        found += [prefix + name for name in names if not excluded(prefix + name, patterns)]
    return sorted(found)


def copy(root: Path, target: Path) -> None:
    """Copies what the context sends, and its .dockerignore, into ``target``, keeping modes and times.

    Building from a copy makes a tag hashed from the copy name exactly what
    was built, even while someone edits the tree. buildah's layer cache keys
    COPY on the files' contents and modes (not times), so it still hits.
    """
    extra = [".dockerignore"] if (root / ".dockerignore").is_file() else []
    for relative in [*files(root), *extra]:
        source, destination = root / relative, target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            destination.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, destination)
