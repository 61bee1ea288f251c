"""The operator's own AWS identity, on the pod network, through its node's proxy: real processes, both start orders.

The operator process has no keys: like a pod, it asks its node's metadata
service (here node-0's proxy, through ``AWS_EC2_METADATA_SERVICE_ENDPOINT``;
in a cluster the proxy's DNAT rule). Its pod (namespace podiam-system,
ServiceAccount podiam-operator, IP 127.0.0.1: where its requests to the proxy
come from) gets a node-identity entry, and the proxy answers its credential
paths from the node's metadata service (a stand-in on loopback serving the
node role, assumed from moto). The node role's account then resolves role
names, and pods get their own roles.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.controlplane import ControlPlane
from tests.integration.operator.test_readiness import wait_logged_readiness, wait_readyz
from localcluster import moto, processes
from tests.support import node_imds
from localcluster import stack as stacks

pytestmark = pytest.mark.integration

NODE_ROLE = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/NodeRole"
NODE_SESSION = f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/NodeRole/i-0node"


@pytest.fixture
def imds(sts: moto.StsFront, tmp_path: Path) -> Iterator[node_imds.NodeImds]:
    running = node_imds.NodeImds(tmp_path, sts_endpoint=sts.url, role_arn=NODE_ROLE).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def stack(controlplane: ControlPlane, sts: moto.StsFront, imds: node_imds.NodeImds, tmp_path: Path) -> Iterator[stacks.Stack]:
    """Two nodes whose proxies' upstream is the stand-in node metadata service; no operator yet."""
    running = stacks.Stack(controlplane, sts, tmp_path, nodes=2, proxy_args=["--upstream", imds.url])
    running.start(operator=False)
    try:
        yield running
    finally:
        running.stop()
        # Operator pods of this test must not claim 127.0.0.1 on node-0 in the next one.
        for pod in controlplane.api("GET", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/pods")["items"]:
            if pod["spec"].get("serviceAccountName") == stacks.OPERATOR_SERVICE_ACCOUNT:
                running.delete_pod(stacks.PROXY_NAMESPACE, pod["metadata"]["name"])


def liveness(process: processes.ManagedProcess) -> int:
    try:
        with urllib.request.urlopen(process.liveness_url, timeout=5) as response:  # type: ignore[attr-defined]
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def pods_get_their_roles(stack: stacks.Stack, ns: str) -> None:
    """A role given by name (it needs the operator's account) works for a pod on each node."""
    stack.create_namespace(ns, ".*")
    for node in stack.nodes:
        pod = stack.create_pod(ns, f"app-{node.name}", role="AppRole", node=node, ip="auto")
        document = stack.wait_credentials(node, pod["status"]["podIP"])
        identity = stacks.caller_identity(stack.sts.url, document)
        assert identity["Arn"].startswith(f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/AppRole/")


def lookups(node: stacks.Node, result: str) -> float:
    prefix = f'podiam_proxy_credential_lookups_total{{result="{result}"}} '
    return sum(float(line[len(prefix):]) for line in node.proxy.metrics().splitlines() if line.startswith(prefix))


def only_the_operator_got_the_node_role(stack: stacks.Stack, imds: node_imds.NodeImds) -> None:
    assert [r for r in imds.requests() if r["credentials"]], "the node role's credentials were never asked for"
    # Only through node-0's proxy, the operator's node, for its node-identity entry.
    assert lookups(stack.nodes[0], "node_identity") > 0 and lookups(stack.nodes[1], "node_identity") == 0
    # A pod with no role on the operator's node gets nothing, never the node's role.
    ip = stack.next_ip()
    stack.create_namespace("own-id-plain", None)
    stack.create_pod("own-id-plain", f"plain-{ip.replace('.', '-')}", node=stack.nodes[0], ip=ip)
    assert stack.imds(stack.nodes[0], ip).status == 404


def test_proxies_first_the_operator_pushes_its_own_entry_and_reads_the_node_role(
    stack: stacks.Stack, imds: node_imds.NodeImds,
) -> None:
    """A fresh install where the proxies won the race: they are up and empty, their rule in place."""
    stack.create_operator_pod(stack.nodes[0], "podiam-operator-first")
    operator = stack.start_operator(env=stack.node_identity_env(stack.nodes[0]))  # waits for kopf's /healthz
    wait_readyz(operator, 200, "ready: active", timeout=60)
    wait_logged_readiness(operator, f"AWS identity: {NODE_SESSION}")
    stack.wait_proxies_ready()
    assert "GetCallerIdentity failed" not in operator.log()
    pods_get_their_roles(stack, "own-id-proxies-first")
    only_the_operator_got_the_node_role(stack, imds)

    # The operator's container restarts (same pod): its entry is still on the proxy, nothing to wait for.
    operator.stop()
    restarted = stack.start_operator(env=stack.node_identity_env(stack.nodes[0]))
    wait_readyz(restarted, 200, "ready: active", timeout=60)
    assert "GetCallerIdentity failed" not in restarted.log()


def test_operator_first_it_stays_alive_says_why_and_converges_when_the_proxies_come(
    stack: stacks.Stack, imds: node_imds.NodeImds,
) -> None:
    """A fresh install where the operator won the race: no proxy yet, so no AWS credentials at all."""
    for node in stack.nodes:
        node.proxy.stop()
        stack.delete_pod(stacks.PROXY_NAMESPACE, f"podiam-proxy-{node.name}")
    stack.create_operator_pod(stack.nodes[0], "podiam-operator-early")
    operator = stack.start_operator(env=stack.node_identity_env(stack.nodes[0]))  # liveness answers without AWS

    text = wait_readyz(operator, 503, "not ready: starting", timeout=30)
    wait_logged_readiness(operator, "starting: pushing this operator's own pods' entries")
    wait_logged_readiness(operator, "NoCredentialsError")
    assert "GetCallerIdentity failed (NoCredentialsError" in operator.log()
    assert liveness(operator) == 200, text

    # The proxies arrive (DaemonSet pods created, processes up): the operator's own entry goes out first.
    for node in stack.nodes:
        node.proxy.start()
        stack.create_proxy_pod(node)
    wait_readyz(operator, 200, "ready: active", timeout=60)
    wait_logged_readiness(operator, f"AWS identity: {NODE_SESSION}")
    stack.wait_proxies_ready()
    assert liveness(operator) == 200 and operator.alive()
    pods_get_their_roles(stack, "own-id-operator-first")
    only_the_operator_got_the_node_role(stack, imds)


def test_a_standby_needs_no_aws(stack: stacks.Stack) -> None:
    stack.create_operator_pod(stack.nodes[0], "podiam-operator-active")
    active = stack.start_operator(env=stack.node_identity_env(stack.nodes[0]))
    wait_readyz(active, 200, "ready: active", timeout=60)
    # A second replica with no way at all to reach AWS: a standby never asks.
    unreachable = {"AWS_EC2_METADATA_DISABLED": "true", "PODIAM_STS_ENDPOINT_URL": "http://127.0.0.1:9"}
    standby = stack.start_operator(env=stack.node_identity_env(stack.nodes[0]) | unreachable)
    wait_readyz(standby, 200, "ready: standby", timeout=30)
    assert liveness(standby) == 200
    assert "GetCallerIdentity" not in standby.log()
