"""``make demo`` end to end: the guide's result on the screen, a non-zero exit otherwise, nothing left behind.

As root (as CI runs) the default is real nodes, and these tests run it; the
stand-in runs when asked for, and as the fallback of a demo that is not root
(``unshare --user``: the same machine, seen without root).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from demo import checks, standin_pods
from tests.demo.conftest import DemoRun, chain_present, leftovers, run_demo

pytestmark = [pytest.mark.integration,
              # Real nodes run podiam's images: built before the first test, outside its timeout.
              *([pytest.mark.usefixtures("podiam_images")] if os.geteuid() == 0 else [])]

ARN = re.compile(r"arn:aws:sts::123456789012:assumed-role/KiamTesterRole/[\w+=,.@-]+")
SECRET_FIELDS = re.compile(r'"(?:SecretAccessKey|Token|SessionToken)": "([^"]*)"')


def _assert_guide_result(output: str) -> None:
    identity = ARN.search(output)
    assert identity, output
    refused = output.find(checks.NO_CREDENTIALS, identity.end())
    assert refused > 0, f"no {checks.NO_CREDENTIALS!r} after the assumed role:\n{output}"
    assert "every step behaved as the guide says" in output
    # Secrets never reach the screen: the credentials document is shown, masked.
    shown = SECRET_FIELDS.findall(output)
    assert shown and set(shown) == {"(masked)"}, shown


def _mode(run: DemoRun) -> str:
    found = re.search(r"^==> 1\. Mode .*\n    (\w+): ", run.output, re.MULTILINE)
    assert found, run.output
    return found.group(1)


def _root() -> bool:
    return os.geteuid() == 0


@pytest.mark.timeout(600)
def test_demo_runs_the_guide_on_real_nodes_by_default() -> None:
    """As root: helm install on two real nodes, the AWS CLI in a real pod through kubectl exec."""
    if not _root():
        pytest.skip("real nodes need root; the fallback test below is the default here (CI runs as root)")
    run = run_demo(timeout=540)
    assert run.returncode == 0, run.output
    assert _mode(run) == "nodes", run.output
    output = run.output
    assert len(re.findall(r"^    node-\d+ +Ready ", output, re.MULTILINE)) == 2, f"two Ready nodes:\n{output}"
    assert "$ helm install podiam ./charts/podiam -n podiam-system --create-namespace" in output
    assert "--set operator.assumeRoleArn=arn:aws:iam::123456789012:role/podiam-operator" in output
    assert "--set proxy.host.interface=cni0" in output
    assert "STATUS: deployed" in output
    ready_proxies = re.findall(r"^    podiam-proxy-\S+ +(\d+)/\1 +Running ", output, re.MULTILINE)
    assert len(ready_proxies) == 2, f"a ready proxy per node:\n{output}"
    exec_line = re.search(r"^  \$ kubectl exec (aws-iam-tester-\S+) -- aws sts get-caller-identity$", output, re.MULTILINE)
    assert exec_line, output
    assert ARN.search(output, exec_line.end()), "the CLI's answer follows kubectl exec"
    assert f"$ kubectl annotate pods {exec_line.group(1)} iam.amazonaws.com/role-" in output
    assert re.search(r"AssumeRole calls, counted at the STS front: .*KiamTesterRole x\d", output), output
    _assert_guide_result(output)
    assert leftovers(run, chain_before=chain_present()) == []


@pytest.mark.timeout(600)
def test_ctrl_c_on_real_nodes_stops_and_removes_everything() -> None:
    """SIGINT to the demo's process group (a terminal's Ctrl-C) once podiam runs on the nodes."""
    if not _root():
        pytest.skip("real nodes need root (CI runs as root)")
    run = run_demo("--mode", "nodes", interrupt_at="==> 5. The guide's chapter 3: permit roles", timeout=540)
    assert run.returncode == 130, run.output
    assert "interrupted: stopping everything the demo started" in run.output
    assert "every step behaved" not in run.output
    assert run.cluster_dirs and len(run.node_namespaces) == 2, run.output
    assert leftovers(run, chain_before=chain_present()) == []


def test_standin_mode_runs_the_guide() -> None:
    """``--mode standin``: the pod in a network namespace as root, on loopback otherwise."""
    chain_before = chain_present()
    reason = standin_pods.netns_unavailable()
    if reason is not None and _root():  # CI runs as root: netns mode must not quietly become loopback there
        pytest.fail(f"the demo's netns mode cannot run although running as root: {reason}")
    expected = "netns" if reason is None else "loopback"
    run = run_demo("--mode", "standin")
    assert run.returncode == 0, run.output
    assert re.search(rf"^    {expected}: ", run.output, re.MULTILINE), run.output
    _assert_guide_result(run.output)
    assert leftovers(run, chain_before) == []


def test_without_root_the_demo_falls_back_to_the_standin_saying_why() -> None:
    """Not root (as root: ``unshare --user``, whose uid is nobody): one line why, then the stand-in on loopback."""
    prefix: tuple[str, ...] = ()
    if _root():
        unshare = shutil.which("unshare")
        assert unshare, "unshare (util-linux) is needed to run the demo without root"
        prefix = (unshare, "--user")
    run = run_demo(prefix=prefix)
    assert run.returncode == 0, run.output
    assert re.search(r"^    standin: real nodes cannot run here: not root \(", run.output, re.MULTILINE), run.output
    assert re.search(r"^    loopback: ", run.output, re.MULTILINE)
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.11:" in run.output
    _assert_guide_result(run.output)
    assert leftovers(run, chain_present()) == []
