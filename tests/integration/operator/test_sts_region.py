"""The STS region, when none is configured, is the node's: the operator (no keys, no region in its environment, on
the pod network) asks placement/region through its node's proxy, which forwards that allow-listed path to the node's
metadata service (a stand-in on loopback, in eu-west-3). Its STS calls are then signed for eu-west-3, as the
counting front records them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.controlplane import ControlPlane
from tests.integration.operator.test_readiness import wait_readyz
from localcluster import moto
from tests.support import node_imds
from localcluster import stack as stacks

pytestmark = pytest.mark.integration
NODE_ROLE = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/NodeRole"


@pytest.fixture
def imds(sts: moto.StsFront, tmp_path: Path) -> Iterator[node_imds.NodeImds]:
    running = node_imds.NodeImds(tmp_path, sts_endpoint=sts.url, role_arn=NODE_ROLE, region="eu-west-3").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def stack(controlplane: ControlPlane, sts: moto.StsFront, imds: node_imds.NodeImds, tmp_path: Path) -> Iterator[stacks.Stack]:
    running = stacks.Stack(controlplane, sts, tmp_path, nodes=1, proxy_args=["--upstream", imds.url])
    running.start(operator=False)
    try:
        yield running
    finally:
        running.stop()
        for pod in controlplane.api("GET", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/pods")["items"]:
            if pod["spec"].get("serviceAccountName") == stacks.OPERATOR_SERVICE_ACCOUNT:
                running.delete_pod(stacks.PROXY_NAMESPACE, pod["metadata"]["name"])


def test_without_a_configured_region_the_operator_uses_its_nodes(stack: stacks.Stack, imds: node_imds.NodeImds) -> None:
    node = stack.nodes[0]
    stack.create_operator_pod(node, "podiam-operator-region")
    # No region anywhere but the node's metadata (an empty PODIAM_STS_REGION is unset; AWS_* are not passed on).
    operator = stack.start_operator(env=stack.node_identity_env(node) | {"PODIAM_STS_REGION": ""})
    wait_readyz(operator, 200, "ready: active", timeout=60)
    stacks.wait_for(lambda: "STS region eu-west-3, from the node's metadata" in operator.log(), 30, "the region's log line")
    assert "/latest/meta-data/placement/region" in {r["path"] for r in imds.requests()}
    stack.create_namespace("region-apps", ".*")
    ip = stack.next_ip()
    stack.create_pod("region-apps", "app", role="RegionalRole", node=node, ip=ip)
    stack.wait_credentials(node, ip)
    (call,) = stack.sts.assume_role_calls(f"arn:aws:iam::{moto.ACCOUNT_ID}:role/RegionalRole")
    assert call["Region"] == "eu-west-3"
