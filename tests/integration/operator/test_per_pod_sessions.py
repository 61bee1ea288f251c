"""Per-pod sessions (``--per-pod-sessions``) against moto for real: one AssumeRole per pod, its own session name and tags."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration
ROLE = "per-pod-role"
ROLE_ARN = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/{ROLE}"
SESSION_ANNOTATION = "iam.amazonaws.com/session-name"


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("per-pod"), nodes=2,
                           operator_env={"PODIAM_PER_POD_SESSIONS": "true"})
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_two_pods_on_one_role_get_their_own_sessions(stack: stacks.Stack, ns: str) -> None:
    before = len(stack.sts.assume_role_calls(ROLE_ARN))
    # The second pod's session name needs sanitising: a quote, a slash and spaces, and 80 characters too many.
    # Both start with the pod's namespace: no pod of another namespace can take these names.
    raw_name = "bob's job/nightly " + "x" * 80
    expected = {"alice": f"{ns}.alice@batch.team-a", "bob": (f"{ns}.bob-s-job-nightly-" + "x" * 80)[:64]}
    pods = {}
    for name, node, session in (("alice", stack.nodes[0], "alice@batch.team-a"), ("bob", stack.nodes[1], raw_name)):
        ip = stack.next_ip()
        created = stack.create_pod(ns, name, role=ROLE, node=node, ip=ip, annotations={SESSION_ANNOTATION: session})
        pods[name] = (node, ip, created["metadata"]["uid"])

    documents = {name: stack.wait_credentials(node, ip) for name, (node, ip, _) in pods.items()}
    assert documents["alice"]["AccessKeyId"] != documents["bob"]["AccessKeyId"]
    assert {d["RoleName"] for d in documents.values()} == {ROLE}
    issued = stack.sts.issued_keys()
    assert all(issued.get(d["AccessKeyId"]) == ROLE_ARN for d in documents.values())

    # Each pod's credentials are its own session, as STS (moto) itself sees them.
    for name, document in documents.items():
        identity = stacks.caller_identity(stack.sts.url, document)
        assert identity["Arn"] == f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/{ROLE}/{expected[name]}", identity

    # Exactly one AssumeRole per pod, each with the pod's session name and the four session tags.
    calls = stack.sts.assume_role_calls(ROLE_ARN)[before:]
    assert len(calls) == 2, calls
    by_session = {call["RoleSessionName"]: call for call in calls}
    assert set(by_session) == set(expected.values())
    for name, (_, _, uid) in pods.items():
        pod = stack.cp.api("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        assert by_session[expected[name]]["Tags"] == {
            "kubernetes-namespace": ns,
            "kubernetes-pod-name": name,
            "kubernetes-pod-uid": uid,
            "kubernetes-service-account": pod["spec"].get("serviceAccountName") or "default",
        }


def test_a_pod_without_a_session_name_is_named_after_itself(stack: stacks.Stack, ns: str) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    stack.create_pod(ns, "carol", role=ROLE, node=node, ip=ip)
    document = stack.wait_credentials(node, ip)
    assert stacks.caller_identity(stack.sts.url, document)["Arn"].endswith(f":assumed-role/{ROLE}/{ns}.carol")
