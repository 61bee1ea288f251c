"""EKS Pod Identity's path on real nodes (issue 15): ``helm install`` with the user's values only, a namespace
labeled ``podiam.io/container-credentials=enabled``, and pods that cannot reach 169.254.169.254 at all read their
role through ``http://169.254.170.23/v1/credentials`` with the projected token the chart's webhook injected.

- The guide's Deployment (the AWS CLI image, role annotation ``KiamTesterRole``) with one more init container,
  which adds ``iptables -A OUTPUT -d 169.254.169.254 -j REJECT`` in the pod's own network namespace (the proxy
  image's iptables, NET_ADMIN for that container only; the application container has no capability to undo it).
- A hostNetwork pod with a role on node-1, run as a uid of its own; node-1's OUTPUT chain rejects that uid's
  packets to 169.254.169.254 (the node's proxy keeps its upstream: it runs as another uid).

Each block is checked first (a request to 169.254.169.254 from the pod is refused); then ``aws sts
get-caller-identity`` prints ``assumed-role/KiamTesterRole/...`` and botocore says its credentials came from
``container-role``. Removing a pod's annotation makes the next call fail with the container provider's error (403),
never the node's role; no pod ever received the node's role (the nodes' metadata logs), and the hostNetwork pod's
uid never sent a packet to 169.254.169.254 besides the block's own check.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from localcluster.controlplane import cluster as clusters
from localcluster.controlplane import controlplane, network
from localcluster.controlplane import node as nodes
from localcluster import guide, pods
from localcluster import release as releases
from localcluster import moto

pytestmark = pytest.mark.e2e

ROLE = "KiamTesterRole"
LABEL = "podiam.io/container-credentials"
FULL_URI = "http://169.254.170.23/v1/credentials"
CC_PORT = 8186  # the proxy's default --container-credentials-port (the chart sets none)
HOST_UID = 4242  # the hostNetwork pod's uid: node-1 rejects its packets to 169.254.169.254
BLOCK_COMMENT = "podiam-e2e-cc: hostNetwork test pod may not reach 169.254.169.254"
AWS_CLI_PYTHON = "/opt/aws-cli/bin/python"  # the AWS CLI's venv (localcluster/images/aws-cli.Dockerfile)
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"

# A request to 169.254.169.254 (IMDSv2's token PUT), as an SDK makes it: what happened, one word.
PROBE_IMDS = """
import socket, urllib.request, urllib.error
req = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
try:
    with urllib.request.urlopen(req, timeout=3) as r:
        print("answered", r.status)
except urllib.error.HTTPError as e:
    print("answered", e.code)
except urllib.error.URLError as e:
    print("refused" if isinstance(e.reason, ConnectionRefusedError) else "failed " + repr(e.reason))
except (socket.timeout, OSError) as e:
    print("failed " + repr(e))
"""

# botocore as the SDKs use it: where its credentials came from, and who STS says they are. The AWS CLI's own
# botocore: awscli 1.46 vendors it as awscli.botocore and aliases ``botocore`` to it once imported.
BOTOCORE = """
import json, awscli, botocore.session
session = botocore.session.get_session()
credentials = session.get_credentials()
arn = session.create_client("sts").get_caller_identity()["Arn"]
print(json.dumps({"method": credentials.method, "arn": arn}))
"""


def test_pods_without_any_path_to_imds_read_their_role_by_token(
    release: releases.Release, real_cluster: clusters.Cluster, sts: moto.StsFront, ns: str,
) -> None:
    plane = real_cluster.plane
    outputs: list[str] = []  # everything any pod's AWS CLI or botocore printed

    # ---- the chart's defaults: the proxies' rule and port, the webhook registered with its CA ----
    release.wait_proxies_ready()
    for name, member in real_cluster.nodes.items():
        rules = [r for r in member.exec("iptables-save", "-t", "nat").stdout.splitlines() if releases.CC_CHAIN in r]
        assert any(f"--to-destination {member.ip}:{CC_PORT}" in r for r in rules), (name, rules)
        assert any(r.startswith("-A OUTPUT ") for r in rules) and any(r.startswith("-A PREROUTING ") for r in rules), rules
    configuration = f"{release.fullname}-container-credentials"
    controlplane.wait_until(lambda: _ca_bundles_filled(plane, configuration), 60,
                            f"the operator filling {configuration}'s caBundle", interval=0.5)

    plane.kubectl("label", "namespace", ns, f"{LABEL}=enabled")
    plane.kubectl("annotate", "namespace", ns, f"iam.amazonaws.com/permitted={ROLE}")
    # failurePolicy Ignore: a pod created before a replica answers is admitted without the variables. A
    # server-side dry run goes through the same webhooks without creating anything.
    since_install = time.time() - release.installed_at
    waited = time.monotonic()
    controlplane.wait_until(lambda: _dry_run_injected(plane, ns, real_cluster), 60,
                            "the webhook injecting a dry-run pod", interval=0.5)
    print(f"\nwebhook injecting: {since_install:.1f} s after helm install began, "
          f"{time.monotonic() - waited:.1f} s more after the namespace was labeled")

    # ---- the guide's Deployment, in a pod whose own network rejects 169.254.169.254 ----
    manifest = guide.deployment(real_cluster, sts.url, node="node-0")
    template = manifest["spec"]["template"]["spec"]
    template["initContainers"] = [{
        "name": "block-imds", "image": real_cluster.images["podiam-proxy"].ref, "imagePullPolicy": "Never",
        "command": ["iptables", "-w", "5", "-A", "OUTPUT", "-d", f"{network.METADATA_ADDRESS}/32", "-j", "REJECT"],
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}},
    }]
    applied = time.monotonic()
    plane.kubectl("apply", "-n", ns, "-f", "-", input=pods.yaml_dump(manifest))
    plane.kubectl("rollout", "status", "-n", ns, "deployment/aws-iam-tester", "--timeout=90s", timeout=120)
    ready = time.monotonic()
    (pod,) = plane.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Daws-iam-tester")["items"]
    name = pod["metadata"]["name"]
    _assert_injected(pod)
    probe = pods.exec_in(plane, ns, name, "python3", "-c", PROBE_IMDS).strip()
    assert probe == "refused", f"169.254.169.254 from {name}: {probe}"

    succeeded, attempts = _first_success(real_cluster, ns, name, outputs, timeout=30)
    print(f"pod-network pod {name}: get-caller-identity succeeded at attempt {attempts}, {succeeded - applied:.1f} s "
          f"after kubectl apply, {succeeded - ready:.1f} s after the rollout was ready (kubectl exec and the CLI's "
          "start included)")
    seen = _botocore(plane, ns, name, outputs)
    assert seen["method"] == "container-role" and f":assumed-role/{ROLE}/" in seen["arn"], seen
    assert pods.exec_in(plane, ns, name, "python3", "-c", PROBE_IMDS).strip() == "refused"
    assert ROLE in plane.kubectl("get", "podrolebindings", "-n", ns)

    # ---- a hostNetwork pod on node-1, its uid rejected on the way to 169.254.169.254 ----
    node = real_cluster.nodes["node-1"]
    block = ["OUTPUT", "-m", "owner", "--uid-owner", str(HOST_UID), "-d", f"{network.METADATA_ADDRESS}/32",
             "-m", "comment", "--comment", BLOCK_COMMENT, "-j", "REJECT"]
    node.exec("iptables", "-w", "5", "-I", *block)
    try:
        host = pods.sleeper("host-net", real_cluster.images["aws-cli"].ref, node="node-1", host_network=True,
                            annotations={"iam.amazonaws.com/role": ROLE},
                            env={"AWS_ENDPOINT_URL_STS": real_cluster.url(sts.url), "AWS_DEFAULT_REGION": real_cluster.region,
                                 "HOME": "/tmp"})
        host["spec"]["securityContext"] = {"runAsUser": HOST_UID, "runAsGroup": HOST_UID, "runAsNonRoot": True}
        created = time.monotonic()
        pods.create(plane, ns, host)
        host_pod = pods.wait_ready(plane, ns, "host-net", timeout=90)
        host_ready = time.monotonic()
        assert host_pod["status"]["podIP"] == node.ip
        _assert_injected(host_pod)
        probe = pods.exec_in(plane, ns, "host-net", "python3", "-c", PROBE_IMDS).strip()
        assert probe == "refused", f"169.254.169.254 from the hostNetwork pod: {probe}"
        rejected = _rejected_packets(node)
        assert rejected >= 1, "the probe's packet did not meet the block"

        succeeded, attempts = _first_success(real_cluster, ns, "host-net", outputs, timeout=30)
        print(f"hostNetwork pod: get-caller-identity succeeded at attempt {attempts}, {succeeded - created:.1f} s "
              f"after it was created, {succeeded - host_ready:.1f} s after it was Ready")
        seen = _botocore(plane, ns, "host-net", outputs)
        assert seen["method"] == "container-role" and f":assumed-role/{ROLE}/" in seen["arn"], seen
        controlplane.wait_until(lambda: "ContainerCredentialsOnly" in
                                {e.get("reason") for e in pods.events(plane, ns, "host-net")}, 30,
                                "the hostNetwork pod's ContainerCredentialsOnly event", interval=0.5)

        # ---- the annotation goes: the next call fails, with the container provider's error ----
        for pod_name in (name, "host-net"):
            plane.kubectl("annotate", "pods", "-n", ns, pod_name, "iam.amazonaws.com/role-")
        for pod_name in (name, "host-net"):
            def refused(pod_name: str = pod_name) -> bool:
                code, output = guide.caller_identity(real_cluster, ns, pod_name)
                outputs.append(output)
                return code != 0 and "container-role" in output

            controlplane.wait_until(refused, 15, f"{pod_name}: no credentials once its annotation is removed",
                                    interval=0.2)
            code, output = guide.caller_identity(real_cluster, ns, pod_name)
            outputs.append(output)
            assert code != 0 and "container-role" in output and "assumed-role" not in output, output
            print(f"{pod_name} without its annotation: {output.splitlines()[-1][:200]}")
        # The hostNetwork pod's uid never tried 169.254.169.254 besides the probe (the chain stops at container-role).
        assert _rejected_packets(node) == rejected
    finally:
        node.exec("iptables", "-w", "5", "-D", *block, check=False)

    # ---- no pod ever saw the node's role ----
    assert not [o for o in outputs if clusters.NODE_ROLE_NAME in o], outputs
    assert release.node_role_leaks() == []


# ---- helpers ------------------------------------------------------------------------------------------------

def _ca_bundles_filled(plane: controlplane.ControlPlane, name: str) -> bool:
    webhooks = plane.api("GET", f"{WEBHOOKS}/{name}").get("webhooks", [])
    return len(webhooks) == 2 and all(w.get("clientConfig", {}).get("caBundle") for w in webhooks)


def _dry_run_injected(plane: controlplane.ControlPlane, ns: str, cluster: clusters.Cluster) -> bool:
    manifest = pods.sleeper("dry-run", cluster.images["aws-cli"].ref)
    answer = plane.api("POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All", manifest)
    return _env(answer["spec"]["containers"][0]).get("AWS_CONTAINER_CREDENTIALS_FULL_URI") == FULL_URI


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _assert_injected(pod: dict[str, Any]) -> None:
    """The webhook's two variables, the mount and the projected token of the proxies' audience."""
    spec = pod["spec"]
    for container in spec["containers"]:
        env = _env(container)
        assert env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") == FULL_URI, (pod["metadata"]["name"], env)
        token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "")
        assert any(token_file.startswith(m["mountPath"] + "/") for m in container.get("volumeMounts", [])), container
    tokens = [s["serviceAccountToken"] for v in spec.get("volumes", []) for s in v.get("projected", {}).get("sources", [])
              if "serviceAccountToken" in s]
    assert any(t.get("audience") == "pods.eks.amazonaws.com" for t in tokens), spec.get("volumes")


def _first_success(cluster: clusters.Cluster, ns: str, pod: str, outputs: list[str],
                   timeout: float) -> tuple[float, int]:
    """When (monotonic) ``aws sts get-caller-identity`` in the pod first printed its role (asked again until
    then), and at which attempt."""
    attempts = len(outputs)

    def assumed() -> bool:
        output, code = cluster.plane.kubectl("exec", "-n", ns, pod, "--", "sh", "-c",
                                             "aws sts get-caller-identity 2>&1; echo \"exit=$?\"",
                                             timeout=30).rstrip().rpartition("exit=")[::2]
        outputs.append(output)
        return int(code) == 0 and f":assumed-role/{ROLE}/" in output

    try:
        controlplane.wait_until(assumed, timeout, f"{pod}: aws sts get-caller-identity printing {ROLE}", interval=0.2)
    except TimeoutError as error:
        raise AssertionError(f"{error}; the AWS CLI said: {outputs[-1] if outputs else '(nothing)'}") from None
    return time.monotonic(), len(outputs) - attempts


def _botocore(plane: controlplane.ControlPlane, ns: str, pod: str, outputs: list[str]) -> dict[str, str]:
    printed = pods.exec_in(plane, ns, pod, AWS_CLI_PYTHON, "-c", BOTOCORE, timeout=60)
    outputs.append(printed)
    seen: dict[str, str] = json.loads(printed.strip().splitlines()[-1])
    return seen


def _rejected_packets(node: nodes.Node) -> int:
    """Packets node-1's block rejected so far (its counter in ``iptables -L OUTPUT -v -x``)."""
    listing = node.exec("iptables", "-w", "5", "-L", "OUTPUT", "-v", "-n", "-x").stdout
    (line,) = [line for line in listing.splitlines() if BLOCK_COMMENT in line]
    return int(line.split()[0])
