"""Which mode the demo runs, and the fallback when real nodes cannot run or a node cannot start (in process)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from demo import __main__ as demo_main
from demo import checks, nodes_cluster

pytestmark = pytest.mark.unit


def _standin_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(demo_main, "_standin", lambda mode, *rest: calls.append(mode))
    return calls


def _node_fails_to_start(workdir: Path, cleanup: contextlib.ExitStack) -> nodes_cluster.Nodes:
    raise nodes_cluster.NodesFailed("NodeError: node-0: kubelet exited with 1 before node-0 Ready")


def test_a_node_that_cannot_start_means_the_standin_saying_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    calls = _standin_calls(monkeypatch)
    monkeypatch.setattr(nodes_cluster, "unavailable", lambda: None)
    monkeypatch.setattr(nodes_cluster, "start_nodes", _node_fails_to_start)
    demo_main._run("auto", tmp_path, contextlib.ExitStack(), demo_main.Started())
    assert calls == ["auto"]  # the stand-in, in its own best mode
    shown = capsys.readouterr().out
    assert ("    standin: real nodes cannot run here: a node could not start "
            "(NodeError: node-0: kubelet exited with 1 before node-0 Ready)\n") in shown


def test_mode_nodes_fails_instead_of_falling_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _standin_calls(monkeypatch)
    monkeypatch.setattr(nodes_cluster, "unavailable", lambda: None)
    monkeypatch.setattr(nodes_cluster, "start_nodes", _node_fails_to_start)
    with pytest.raises(checks.DemoFailure, match="real nodes cannot run here: a node could not start"):
        demo_main._run("nodes", tmp_path, contextlib.ExitStack(), demo_main.Started())
    assert calls == []


def test_not_root_means_the_standin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    calls = _standin_calls(monkeypatch)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    demo_main._run("auto", tmp_path, contextlib.ExitStack(), demo_main.Started())
    assert calls == ["auto"]
    assert "    standin: real nodes cannot run here: not root (" in capsys.readouterr().out


@pytest.mark.parametrize(("asked", "standin_mode"), [("standin", "auto"), ("netns", "netns"), ("loopback", "loopback")])
def test_standin_modes_never_try_real_nodes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, asked: str,
                                            standin_mode: str) -> None:
    calls = _standin_calls(monkeypatch)
    monkeypatch.setattr(nodes_cluster, "start_nodes", _node_fails_to_start)
    demo_main._run(asked, tmp_path, contextlib.ExitStack(), demo_main.Started())
    assert calls == [standin_mode]


def test_helm_values_become_the_set_flags_a_user_types() -> None:
    values = {"operator": {"image": {"repository": "localhost/podiam/podiam-operator", "tag": "012345678901"},
                           "assumeRoleArn": "arn:aws:iam::123456789012:role/podiam-operator"},
              "proxy": {"host": {"interface": "cni0"}}}
    assert nodes_cluster.set_flags(values) == [
        "--set", "operator.image.repository=localhost/podiam/podiam-operator",
        "--set-string", "operator.image.tag=012345678901",  # digits only: --set would make it a number
        "--set", "operator.assumeRoleArn=arn:aws:iam::123456789012:role/podiam-operator",
        "--set", "proxy.host.interface=cni0",
    ]
