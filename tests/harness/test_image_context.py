"""The build context an image's tag hashes: Docker's .dockerignore rules, and the tag following the files."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster.images import context, images

pytestmark = pytest.mark.unit


def _tree(root: Path, dockerignore: str, paths: list[str]) -> Path:
    root.mkdir(exist_ok=True)
    (root / ".dockerignore").write_text(dockerignore)
    for relative in paths:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(relative)
    return root


def test_the_repository_context_is_what_the_dockerfiles_copy() -> None:
    sent = context.files(images.REPO)
    assert {"pyproject.toml", "README.md", "scripts/install-image-venv.sh", "metadata_proxy/__init__.py",
            "operator/podiam_operator/__init__.py"} <= set(sent)
    tops = {"pyproject.toml", "README.md", "scripts", "metadata_proxy", "operator"}
    assert all(f.split("/")[0] in tops for f in sent)
    assert not [f for f in sent if "__pycache__" in f or f.endswith(".pyc")]
    assert [f for f in sent if f.startswith("scripts/")] == ["scripts/install-image-venv.sh"]


@pytest.mark.parametrize(("dockerignore", "sent"), [
    # "*" stays within one element; a match on a directory covers what is below it.
    ("*\n!keep/\n", ["keep/a.py", "keep/sub/b.py"]),
    ("keep/*.py\n", ["drop/a.py", "keep/sub/b.py", "top.txt"]),
    # "**/" matches at any depth, including none.
    ("**/sub\n", ["drop/a.py", "keep/a.py", "top.txt"]),
    ("**/*.py\n", ["top.txt"]),
    # The last matching pattern wins; a leading "/" is the context's root.
    ("/keep\n!keep/a.py\n", ["drop/a.py", "keep/a.py", "top.txt"]),
    ("!keep/a.py\nkeep\n", ["drop/a.py", "top.txt"]),
    ("", ["drop/a.py", "keep/a.py", "keep/sub/b.py", "top.txt"]),
])
def test_dockerignore_rules(tmp_path: Path, dockerignore: str, sent: list[str]) -> None:
    root = _tree(tmp_path, dockerignore, ["drop/a.py", "keep/a.py", "keep/sub/b.py", "top.txt"])
    assert [f for f in context.files(root) if f != ".dockerignore"] == sent


def test_tag_follows_sent_files_and_modes_but_not_ignored_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "context", "*\n!app/\n", ["app/main.py", "notes.txt"])
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY app/ /app/\n")
    base = images.plan()["python-base"]

    def tag() -> str:
        return images._image("x", images._dockerfile_inputs(dockerfile, root, base)).tag

    first = tag()
    (root / "notes.txt").write_text("changed, but never sent")
    assert tag() == first
    (root / "app/main.py").chmod(0o755)
    assert tag() != first
    moded = tag()
    (root / "app/main.py").write_text("changed")
    assert tag() != moded


def test_copy_holds_exactly_what_is_sent(tmp_path: Path) -> None:
    root = _tree(tmp_path / "context", "*\n!app/\n", ["app/main.py", "app/sub/x.py", "notes.txt"])
    (root / "app/main.py").chmod(0o750)
    context.copy(root, tmp_path / "copy")
    assert context.files(tmp_path / "copy") == context.files(root) == ["app/main.py", "app/sub/x.py"]
    assert (tmp_path / "copy/.dockerignore").read_text() == "*\n!app/\n"
    assert (tmp_path / "copy/app/main.py").stat().st_mode & 0o777 == 0o750
