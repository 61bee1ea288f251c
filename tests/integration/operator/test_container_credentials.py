"""The container-credentials path on the real stack: tokens the real API server issued, real proxies, real pushes.

Each pod's token comes from the TokenRequest API bound to the pod (``boundObjectRef``), which gives it the
``kubernetes.io`` pod claims, with EKS Pod Identity's audience: the token the kubelet projects into a pod.
botocore's ContainerProvider and the AWS CLI read the pod's role with it, with the metadata service out of
reach (its endpoint a closed port); every refusal is a real token (or one forged with the cluster's own or
another key) sent to a real proxy. Rotation runs on a private control plane (its API server restarts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localcluster.controlplane import ControlPlane
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration

AUDIENCE = "pods.eks.amazonaws.com"
ACCOUNT = "123456789012"
CLOSED = "http://127.0.0.1:9"  # the metadata service, out of reach


def token_for(plane: ControlPlane, namespace: str, pod: str | None, *, audience: str = AUDIENCE,
              service_account: str = "default", seconds: int = 3600) -> str:
    """A token of the pod's ServiceAccount bound to the pod, as the kubelet projects it (``pod`` None: bound to nothing)."""
    spec: dict[str, Any] = {"audiences": [audience], "expirationSeconds": seconds}
    if pod is not None:
        uid = plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")["metadata"]["uid"]
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}
    answer = plane.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    return str(answer["status"]["token"])


def wait_keys(stack: stacks.Stack, node: stacks.Node, fingerprint: str | None = None) -> str:
    """The service-account keys the operator pushed to the node's proxy (other than ``fingerprint``)."""
    return stacks.wait_for(lambda: (got := node.proxy.status().service_account_keys) and got != fingerprint and got,
                           60, f"service-account keys on {node.name}")


def read(node: stacks.Node, token: str | None) -> tuple[int, dict[str, Any]]:
    answer = node.proxy.container_credentials(token)
    return answer.status, json.loads(answer.body)


def sdk_env(node: stacks.Node, token_file: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": node.proxy.container_credentials_url,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": CLOSED, "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "HOME": str(home),
        "AWS_DEFAULT_REGION": "us-east-1",
    }


BOTOCORE = """
import json, sys, boto3, botocore.session
session = botocore.session.get_session()
credentials = session.get_credentials()
frozen = credentials.get_frozen_credentials()
identity = boto3.Session(botocore_session=session).client("sts", endpoint_url=sys.argv[1]).get_caller_identity()
print(json.dumps({"method": credentials.method, "access_key": frozen.access_key, "arn": identity["Arn"]}))
"""


def test_botocore_and_the_aws_cli_read_the_pods_role_by_token_without_imds(
    stack: stacks.Stack, ns: str, tmp_path: Path,
) -> None:
    node = stack.nodes[0]
    stack.create_pod(ns, "app", role="token-reader", node=node, ip="auto")
    stack.wait_binding_phase(ns, "app", "Bound")
    wait_keys(stack, node)
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(token_for(stack.cp, ns, "app"))
    env = sdk_env(node, token_file, tmp_path)

    status, document = read(node, token_file.read_text())
    assert status == 200 and tuple(document) == ("AccessKeyId", "SecretAccessKey", "Token", "AccountId", "Expiration")
    assert document["AccountId"] == ACCOUNT

    done = subprocess.run([sys.executable, "-c", BOTOCORE, stack.sts.url], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["method"] == "container-role" and seen["access_key"] == document["AccessKeyId"]
    assert seen["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/token-reader/")

    aws = Path(sys.executable).with_name("aws")
    cli = subprocess.run([str(aws), "sts", "get-caller-identity", "--endpoint-url", stack.sts.url, "--output", "json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["Arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/token-reader/")


def test_a_host_network_pod_is_served_by_token(stack: stacks.Stack, ns: str) -> None:
    node = stack.nodes[0]
    stack.create_pod(ns, "agent", role="agent-role", node=node, ip="auto", host_network=True)
    stack.wait_binding_phase(ns, "agent", "Bound")
    wait_keys(stack, node)
    token = token_for(stack.cp, ns, "agent")
    status, document = stacks.wait_for(lambda: (answer := read(node, token))[0] == 200 and answer, 30, "hostNetwork pod served")
    assert stacks.caller_identity(stack.sts.url, {"AccessKeyId": document["AccessKeyId"],
                                                 "SecretAccessKey": document["SecretAccessKey"],
                                                 "Token": document["Token"]})["Arn"].split("/")[1] == "agent-role"
    # Never by IP on the metadata path.
    assert stack.imds(node, node.ip).status == 404


def _signing_key(plane: ControlPlane, token: str) -> Any:
    """The API server's private key that signed ``token`` (the cluster's own: pki/sa.key, or a rotated one)."""
    for path in sorted(plane.pki.glob("**/sa.key")):
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        try:
            jwt.decode(token, key.public_key(), algorithms=["ES256", "RS256"], options={"verify_aud": False})  # type: ignore[arg-type]
        except jwt.InvalidSignatureError:
            continue
        return key
    raise AssertionError("no key of the cluster signed the token")


def test_refusals(stack: stacks.Stack, ns: str) -> None:
    here, there = stack.nodes
    stack.create_pod(ns, "here", role="r-here", node=here, ip="auto")
    stack.create_pod(ns, "there", role="r-there", node=there, ip="auto")
    stack.create_pod(ns, "unbound", role=None, node=here, ip="auto")
    stack.create_pod(ns, "recreated", role="r-here", node=here, ip="auto")
    for name in ("here", "there", "recreated"):
        stack.wait_binding_phase(ns, name, "Bound")
    wait_keys(stack, here)
    good = token_for(stack.cp, ns, "here")
    assert read(here, good)[0] == 200

    old = token_for(stack.cp, ns, "recreated")
    assert read(here, old)[0] == 200
    stack.delete_pod(ns, "recreated")
    stacks.wait_for(lambda: read(here, old)[0] == 403, 30, "the deleted pod's token refused")
    stack.create_pod(ns, "recreated", role="r-here", node=here, ip="auto")
    stack.wait_binding_phase(ns, "recreated", "Bound")
    fresh = token_for(stack.cp, ns, "recreated")
    stacks.wait_for(lambda: read(here, fresh)[0] == 200, 30, "the new pod of that name served")

    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    now = int(time.time())
    expired = jwt.encode(claims | {"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600},
                         _signing_key(stack.cp, good), algorithm=header["alg"], headers={"kid": header["kid"]})
    assert header["alg"] == "RS256"  # the cluster signs as kubeadm and EKS do: the proxy's standard-library path
    forged = jwt.encode(claims, rsa.generate_private_key(65537, 2048), algorithm="RS256", headers={"kid": header["kid"]})

    cases = {
        "another node's pod": (token_for(stack.cp, ns, "there"), 403, "has no role on this node"),
        "deleted pod (uid changed)": (old, 403, "the token's pod"),
        "wrong audience": (token_for(stack.cp, ns, "here", audience="sts.amazonaws.com"), 401, "audience"),
        "expired (signed with the cluster's own key)": (expired, 401, "expired"),
        "forged (another key)": (forged, 401, "signature does not verify"),
        "pod not bound": (token_for(stack.cp, ns, "unbound"), 403, "has no role on this node"),
        "token bound to no pod": (token_for(stack.cp, ns, None), 403, "not bound to a pod"),
        "no token": (None, 400, "no Authorization header"),
    }
    for case, (token, status, said) in cases.items():
        got, body = read(here, token)
        assert (got, said in body.get("message", "")) == (status, True), (case, body)
        assert "AccessKeyId" not in body and set(body) == {"code", "message"}, case
    # The other node's proxy serves its own pod, and only it.
    assert read(there, token_for(stack.cp, ns, "there"))[0] == 200
    assert read(there, good)[0] == 403
    # The proxy's log names the refusals by key id and subject, never the token.
    log = here.proxy.log()
    assert "container credentials refused" in log and header["kid"] in log
    assert good not in log and expired not in log and forged not in log


@pytest.fixture
def private_stack(make_controlplane: Any, sts: moto.StsFront, tmp_path: Path) -> Iterator[stacks.Stack]:
    """A control plane of its own (its API server restarts with a new key) and a stack reading keys every 5 s."""
    plane = make_controlplane()
    running = stacks.Stack(plane, sts, tmp_path, nodes=1, operator_env={"PODIAM_SERVICE_ACCOUNT_KEYS_INTERVAL": "5"})
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_a_key_rotation_reaches_the_proxies_and_drops_no_valid_token(private_stack: stacks.Stack) -> None:
    stack = private_stack
    node = stack.nodes[0]
    ns = f"rotation-{uuid.uuid4().hex[:6]}"
    stack.create_namespace(ns, ".*")
    stack.create_pod(ns, "app", role="rotating", node=node, ip="auto")
    stack.wait_binding_phase(ns, "app", "Bound")
    before = wait_keys(stack, node)
    old = token_for(stack.cp, ns, "app")
    assert read(node, old)[0] == 200

    stack.cp.rotate_service_account_key()
    new = token_for(stack.cp, ns, "app")
    assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
    wait_keys(stack, node, before)  # the operator read the new JWKS and pushed it
    assert read(node, new)[0] == 200
    assert read(node, old)[0] == 200  # still one of the API server's keys: still valid
