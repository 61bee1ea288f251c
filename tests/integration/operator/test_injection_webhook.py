"""The injection webhook through the real API server: a MutatingWebhookConfiguration calls the operator's webhook
(a local process, clientConfig.url https://127.0.0.1:PORT), with the serving certificate TLS ``auto`` mode issued
and the caBundle the operator filled in; pods created with ``kubectl`` come back with EKS Pod Identity's two
variables and the projected token where a namespace or the pod opted in, and untouched where they did not; and
botocore, given a token of the projected volume's audience bound to the pod, reads the pod's role from a proxy.

The configuration's selectors, failurePolicy and the rest are the chart's (templates/webhook.yaml); only the
clientConfig differs (the chart's is the Service). It is deleted at the end: the control plane is shared.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from localcluster.controlplane import ApiError, ControlPlane, kubelet
from localcluster import moto, ports
from localcluster import stack as stacks

pytestmark = pytest.mark.integration

LABEL = "podiam.io/container-credentials"
FULL_URI = "http://169.254.170.23/v1/credentials"
TOKEN_FILE = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"
AUDIENCE = "pods.eks.amazonaws.com"
ACCOUNT = "123456789012"
CONFIGURATION = f"podiam-it-{uuid.uuid4().hex[:6]}"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def configuration(port: int) -> dict[str, Any]:
    """The chart's two webhooks (a namespace opted in; a pod opted in elsewhere), calling the local operator."""
    excluded = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [stacks.PROXY_NAMESPACE, "kube-system"]}
    common = {
        "admissionReviewVersions": ["v1"],
        "clientConfig": {"url": f"https://127.0.0.1:{port}/container-credentials"},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
        "failurePolicy": "Ignore", "sideEffects": "None", "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded",
        "matchPolicy": "Equivalent",
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [
            {"name": "namespaces.container-credentials.podiam.io", **common,
             "namespaceSelector": {"matchExpressions": [{"key": LABEL, "operator": "In", "values": ["enabled"]}, excluded]},
             "objectSelector": {"matchExpressions": [{"key": LABEL, "operator": "NotIn", "values": ["disabled"]}]}},
            {"name": "pods.container-credentials.podiam.io", **common,
             "namespaceSelector": {"matchExpressions": [{"key": LABEL, "operator": "NotIn", "values": ["enabled", "disabled"]},
                                                        excluded]},
             "objectSelector": {"matchLabels": {LABEL: "enabled"}}},
        ],
    }


@pytest.fixture(scope="module")
def webhook_port() -> int:
    return ports.free_port()


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory,
          webhook_port: int) -> Iterator[stacks.Stack]:
    workdir = tmp_path_factory.mktemp("webhook")
    controlplane.api("POST", WEBHOOKS, configuration(webhook_port))
    running = stacks.Stack(controlplane, sts, workdir, nodes=1, tls="auto", operator_env={
        "PODIAM_WEBHOOK_PORT": str(webhook_port), "PODIAM_WEBHOOK_ADDRESS": "127.0.0.1",
        "PODIAM_WEBHOOK_CERT_FILE": str(workdir / "webhook" / "tls.crt"),
        "PODIAM_WEBHOOK_KEY_FILE": str(workdir / "webhook" / "tls.key"),
        "PODIAM_TLS_WEBHOOK_SERVICE": "podiam-webhook", "PODIAM_TLS_WEBHOOK_HOSTS": "127.0.0.1",
        "PODIAM_TLS_WEBHOOK_CONFIGURATION": CONFIGURATION,
    })
    try:
        running.start()
        yield running
    except BaseException:
        running.print_operator_logs()
        raise
    finally:
        running.stop()
        try:
            controlplane.api("DELETE", f"{WEBHOOKS}/{CONFIGURATION}")
        except ApiError:
            pass


def ca_bundles(plane: ControlPlane) -> list[str | None]:
    found = plane.api("GET", f"{WEBHOOKS}/{CONFIGURATION}")
    return [hook["clientConfig"].get("caBundle") for hook in found["webhooks"]]


@pytest.fixture(scope="module")
def ready(stack: stacks.Stack) -> stacks.Stack:
    """The operator filled in both caBundles (the CA of TLS auto mode) and its webhook answers the API server."""
    bundles = stacks.wait_for(lambda: all(ca_bundles(stack.cp)) and ca_bundles(stack.cp), 60, "the caBundle filled in")
    secret = stack.cp.api("GET", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/secrets/podiam-ca")
    assert {base64.b64decode(bundle) for bundle in bundles} == {base64.b64decode(secret["data"]["ca.crt"])}
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    stack.create_namespace(probe, None)
    label_namespace(stack.cp, probe, "enabled")
    stacks.wait_for(lambda: env_of(create(stack.cp, probe, f"p{uuid.uuid4().hex[:6]}")), 60, "the webhook answers")
    return stack


def label_namespace(plane: ControlPlane, name: str, value: str | None) -> None:
    plane.api("PATCH", f"/api/v1/namespaces/{name}", {"metadata": {"labels": {LABEL: value}}})


def create(plane: ControlPlane, namespace: str, name: str, *, labels: dict[str, str] | None = None,
           env: list[dict[str, str]] | None = None, annotations: dict[str, str] | None = None,
           host_network: bool = False) -> dict[str, Any]:
    """``kubectl create`` of a pod; the pod as the API server stored it."""
    container: dict[str, Any] = {"name": "app", "image": "app"}
    if env:
        container["env"] = env
    spec: dict[str, Any] = {"containers": [container, {"name": "side", "image": "side"}]}
    if host_network:
        spec["hostNetwork"] = True
    manifest = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, "annotations": annotations or {}},
                "spec": spec}
    out = plane.kubectl("create", "-o", "json", "-f", "-", input=yaml.safe_dump(manifest))
    created: dict[str, Any] = json.loads(out)
    return created


def env_of(pod: dict[str, Any], index: int = 0) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in pod["spec"]["containers"][index].get("env") or []}


def token_volume(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next((v for v in pod["spec"].get("volumes") or [] if v["name"] == "eks-pod-identity-token"), None)


def injected(pod: dict[str, Any]) -> bool:
    volume = token_volume(pod)
    return all(
        env_of(pod, i).get("AWS_CONTAINER_CREDENTIALS_FULL_URI") == FULL_URI
        and env_of(pod, i).get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") == TOKEN_FILE
        and any(m["name"] == "eks-pod-identity-token" and m["mountPath"] == os.path.dirname(TOKEN_FILE) and m.get("readOnly")
                for m in pod["spec"]["containers"][i].get("volumeMounts") or [])
        for i in range(len(pod["spec"]["containers"]))
    ) and volume is not None and volume["projected"]["sources"][0]["serviceAccountToken"] == {
        "audience": AUDIENCE, "expirationSeconds": 86400, "path": "eks-pod-identity-token"}


def test_the_webhook_serves_the_certificate_auto_mode_issued_for_it(ready: stacks.Stack, webhook_port: int, tmp_path: Path) -> None:
    import ssl

    secret = ready.cp.api("GET", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/secrets/podiam-webhook-tls")
    stored = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    served = x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", webhook_port)).encode())
    assert served.serial_number == stored.serial_number
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "podiam-webhook.podiam-system.svc" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_pods_opted_in_by_namespace_or_label_get_the_variables_and_the_token(ready: stacks.Stack) -> None:
    plane = ready.cp
    enabled, plain = f"inj-{uuid.uuid4().hex[:6]}", f"plain-{uuid.uuid4().hex[:6]}"
    ready.create_namespace(enabled, ".*")
    ready.create_namespace(plain, ".*")
    label_namespace(plane, enabled, "enabled")

    assert injected(create(plane, enabled, "app"))
    assert injected(create(plane, enabled, "agent", host_network=True))  # hostNetwork pods: exactly this path's
    assert injected(create(plane, plain, "opted-in", labels={LABEL: "enabled"}))

    out = create(plane, enabled, "opted-out", labels={LABEL: "disabled"})
    assert not env_of(out) and token_volume(out) is None
    out = create(plane, plain, "not-asked")
    assert not env_of(out) and token_volume(out) is None

    by_hand = [{"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://127.0.0.1:1/mine"}]
    out = create(plane, enabled, "by-hand", env=by_hand)
    assert out["spec"]["containers"][0]["env"] == by_hand
    assert all(m["name"] != "eks-pod-identity-token" for m in out["spec"]["containers"][0].get("volumeMounts") or [])
    assert env_of(out, 1)["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == FULL_URI  # its other container, not set by hand

    # A namespace labeled disabled: not even a pod's own label opts in.
    label_namespace(plane, plain, "disabled")
    out = create(plane, plain, "refused-by-namespace", labels={LABEL: "enabled"})
    assert not env_of(out) and token_volume(out) is None
    # The operator's own namespace is never injected.
    label_namespace(plane, stacks.PROXY_NAMESPACE, "enabled")
    try:
        out = create(plane, stacks.PROXY_NAMESPACE, f"own-{uuid.uuid4().hex[:6]}", labels={LABEL: "enabled"})
        assert not env_of(out)
        plane.api("DELETE", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/pods/{out['metadata']['name']}")
    finally:
        label_namespace(plane, stacks.PROXY_NAMESPACE, None)


BOTOCORE = """
import json, sys, boto3, botocore.session
session = botocore.session.get_session()
credentials = session.get_credentials()
identity = boto3.Session(botocore_session=session).client("sts", endpoint_url=sys.argv[1]).get_caller_identity()
print(json.dumps({"method": credentials.method, "arn": identity["Arn"]}))
"""


def test_botocore_reads_the_role_with_a_token_of_the_injected_volume(ready: stacks.Stack, tmp_path: Path) -> None:
    plane, node = ready.cp, ready.nodes[0]
    ns = f"inj-sdk-{uuid.uuid4().hex[:6]}"
    ready.create_namespace(ns, ".*")
    label_namespace(plane, ns, "enabled")
    pod = create(plane, ns, "app", annotations={"iam.amazonaws.com/role": "injected-reader"})
    assert injected(pod)
    kubelet.bind_pod(plane, ns, "app", node.name)
    kubelet.set_pod_status(plane, ns, "app", pod_ip=ready.next_ip())
    ready.wait_binding_phase(ns, "app", "Bound")

    # What the kubelet would write to the projected volume: a token of the pod's ServiceAccount bound to the pod,
    # with the volume's audience and lifetime.
    projected = token_volume(pod)["projected"]["sources"][0]["serviceAccountToken"]  # type: ignore[index]
    answer = plane.api("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [projected["audience"]], "expirationSeconds": projected["expirationSeconds"],
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "app", "uid": pod["metadata"]["uid"]}}})
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(answer["status"]["token"])
    # The proxy has the API server's keys and the pod's entry (pushed in the background): a 200 for this token.
    stacks.wait_for(lambda: node.proxy.container_credentials(answer["status"]["token"]).status == 200, 60,
                    "the proxy serves the token")

    # The pod's variables, but for the address: 169.254.170.23 is the node tier's (iptables); here the proxy's port.
    variables = env_of(pod)
    assert variables["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == FULL_URI
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": node.proxy.container_credentials_url,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "HOME": str(tmp_path),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    done = subprocess.run([sys.executable, "-c", BOTOCORE, ready.sts.url], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["method"] == "container-role"
    assert seen["arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/injected-reader/")


def test_with_the_operator_down_pods_are_admitted_unchanged(ready: stacks.Stack) -> None:
    """failurePolicy Ignore: the API server cannot reach the webhook, and the pod is created without the variables."""
    ns = f"inj-down-{uuid.uuid4().hex[:6]}"
    ready.create_namespace(ns, ".*")
    label_namespace(ready.cp, ns, "enabled")
    for process in ready.operators:
        process.stop()
    out = create(ready.cp, ns, "app")
    assert not env_of(out) and token_volume(out) is None
