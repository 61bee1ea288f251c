"""kube2iam's configurable keys on the real stack: --iam-role-key, --iam-external-id, --namespace-key and
--namespace-restriction-format regexp, read both from the operator's initial listing (pods and namespaces made before the
operator starts) and from later events; the default keys then mean nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.controlplane import ControlPlane
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration
OWN = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/"
KEYS = {"PODIAM_IAM_ROLE_KEY": "example.com/iam-role", "PODIAM_IAM_EXTERNAL_ID": "example.com/external-id",
        "PODIAM_NAMESPACE_KEY": "example.com/allowed-roles", "PODIAM_NAMESPACE_RESTRICTION_FORMAT": "regexp"}


@pytest.fixture
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path: Path) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path, nodes=1, operator_env=KEYS)
    running.start(operator=False)
    try:
        yield running
    finally:
        running.stop()


def annotate_namespace(stack: stacks.Stack, ns: str, annotations: dict[str, str | None]) -> None:
    stack.cp.api("PATCH", f"/api/v1/namespaces/{ns}", {"metadata": {"annotations": annotations}})


def test_the_configured_keys_are_read_at_start_and_after(stack: stacks.Stack) -> None:
    node, ns = stack.nodes[0], "custom-keys"
    stack.create_namespace(ns, None)
    annotate_namespace(stack, ns, {"example.com/allowed-roles": '["keyed-.*"]', "iam.amazonaws.com/permitted": ".*"})
    early, default_key = stack.next_ip(), stack.next_ip()
    stack.create_pod(ns, "early", node=node, ip=early, annotations={"example.com/iam-role": "keyed-early",
                                                                     "example.com/external-id": "ext-early"})
    stack.create_pod(ns, "kiam-style", node=node, ip=default_key, role="keyed-ignored")  # iam.amazonaws.com/role
    stack.start_operator()
    stack.wait_proxies_ready()
    document = stack.wait_credentials(node, early)
    assert stack.sts.issued_keys()[document["AccessKeyId"]] == OWN + "keyed-early"
    assert stack.wait_binding_phase(ns, "early", "Bound")["spec"]["externalId"] == "ext-early"
    assert stack.imds(node, default_key).status == 404 and stack.binding(ns, "kiam-style") is None

    late = stack.next_ip()
    stack.create_pod(ns, "late", node=node, ip=late, annotations={"example.com/iam-role": "keyed-late"})
    stack.wait_credentials(node, late)
    denied = stack.next_ip()
    stack.create_pod(ns, "outside", node=node, ip=denied, annotations={"example.com/iam-role": "other"})
    assert "example.com/allowed-roles" in stack.wait_binding_phase(ns, "outside", "Denied")["status"]["message"]
    # Narrowing the list under its configured key revokes.
    annotate_namespace(stack, ns, {"example.com/allowed-roles": '["keyed-early"]'})
    stack.wait_no_credentials(node, late, timeout=5)
    assert stack.credentials(node, early) is not None
