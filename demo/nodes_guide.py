"""Real-node mode: the guide's test chapter with a real pod, ``kubectl exec`` and the AWS CLI inside it.

1. ``kubectl annotate namespace default iam.amazonaws.com/permitted='.*'``
2. ``kubectl apply -f`` the guide's Deployment (a copy with the two changes
   this machine needs, shown as a diff), ``kubectl get pods -o wide``,
   ``kubectl get podrolebindings``;
3. in the pod: the metadata API, then ``aws sts get-caller-identity`` prints
   the assumed KiamTesterRole;
4. ``kubectl annotate pods … iam.amazonaws.com/role-``: the same command
   fails with "Unable to locate credentials";
5. the AssumeRole calls STS saw, and no pod ever got the node's role.
"""

from __future__ import annotations

import collections
import difflib
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from demo import checks, kubectl, show
from demo.nodes_cluster import POD_NETWORK, Nodes
from localcluster.controlplane import cluster as clusters
from localcluster import guide as e2e_guide

PROBE = Path(__file__).resolve().parent / "imds_probe.py"
METADATA = "169.254.169.254"
REVOCATION_SECONDS = 10.0  # how long a pod may keep its credentials after the annotation is removed (if at all)


def deploy_tester(nodes: Nodes, workdir: Path) -> str:
    show.step("The guide's chapter 4: the aws-iam-tester Deployment (annotation iam.amazonaws.com/role: KiamTesterRole)")
    plane = nodes.cluster.plane
    guide_manifest = yaml.safe_load(e2e_guide.GUIDE_DEPLOYMENT.read_text())
    applied = yaml.safe_dump(e2e_guide.deployment(nodes.cluster, nodes.sts.url), sort_keys=False)
    path = workdir / "aws-iam-tester.yaml"
    path.write_text(applied)
    show.say("No registry and no route to AWS here, so the demo applies a copy (localcluster/guide.py) with the AWS CLI")
    show.say("image built here (the guide's garland/aws-cli-docker cannot be pulled) and AWS_ENDPOINT_URL_STS set to")
    show.say("moto through the nodes' relay. Every difference from the guide's Deployment:")
    diff = difflib.unified_diff(yaml.safe_dump(guide_manifest, sort_keys=False).splitlines(), applied.splitlines(),
                                "demo/aws-iam-tester.yaml (the guide's, as YAML without its comments)", str(path),
                                n=1, lineterm="")
    show.output("\n".join(diff))
    kubectl.run(plane, "apply", "-f", str(path))
    kubectl.run(plane, "rollout", "status", "deployment/aws-iam-tester", "--timeout=90s", timeout=100)
    pod = _running_pod(nodes)
    kubectl.run(plane, "get", "pods", "-o", "wide")
    checks.eventually(lambda: _binding_phase(nodes, pod) == "Bound", 30, f"podrolebinding {pod} Bound")
    listed = kubectl.run(plane, "get", "podrolebindings")
    checks.expect(pod in listed and "KiamTesterRole" in listed, "the pod's binding is not listed with its role")
    show.ok(f"the operator bound {pod} to KiamTesterRole")
    return pod


def _running_pod(nodes: Nodes) -> str:
    listed = nodes.cluster.plane.api(
        "GET", f"/api/v1/namespaces/{kubectl.NAMESPACE}/pods?labelSelector=app%3Daws-iam-tester")["items"]
    running = [p for p in listed if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    checks.expect(len(running) == 1, f"{len(running)} aws-iam-tester pods Running, expected 1")
    (pod,) = running
    checks.expect(pod["spec"].get("nodeName") in nodes.cluster.nodes, "the pod is on none of the real nodes")
    checks.expect(ipaddress.ip_address(pod["status"]["podIP"]) in POD_NETWORK, "the pod is not on the pod network")
    return str(pod["metadata"]["name"])


def _binding_phase(nodes: Nodes, name: str) -> str | None:
    binding = nodes.cluster.plane.api(
        "GET", f"/apis/podiam.io/v1alpha1/namespaces/{kubectl.NAMESPACE}/podrolebindings/{name}")
    phase: str | None = binding.get("status", {}).get("phase")
    return phase


def read_metadata(nodes: Nodes, pod: str) -> None:
    show.step("Inside the pod: the EC2 metadata API (secrets masked here)")
    show.say("The image has no curl: demo/imds_probe.py (Python's standard library) does what curl would, an IMDSv2")
    show.say(f"token, the role listing, the role's credentials, from plain http://{METADATA} (the node's proxy")
    show.say(f"answers it: its iptables rule sends {METADATA}:80 from {pod}'s interface to the proxy).")
    done = kubectl.call(nodes.cluster.plane, "exec", "-i", pod, "--", "python3", "-", METADATA, "80",
                        shown=f"exec -i {pod} -- python3 - {METADATA} 80 < demo/imds_probe.py", input=PROBE.read_text())
    checks.expect(done.returncode == 0, f"the metadata probe failed in the pod: {done.stderr.strip()}")
    results: list[dict[str, Any]] = json.loads(done.stdout)
    show.metadata_requests(results, f"http://{METADATA}", prompt=f"{pod}$")
    checks.role_served(results)
    show.ok("the pod reads its role's temporary credentials from the metadata API, as on EC2")


def _caller_identity(nodes: Nodes, pod: str) -> tuple[int, str]:
    show.line(f"kubectl exec {pod} -- aws sts get-caller-identity")
    code, output = e2e_guide.caller_identity(nodes.cluster, kubectl.NAMESPACE, pod)
    show.output(output)
    return code, output


def caller_identity(nodes: Nodes, pod: str) -> None:
    show.step("Inside the pod: the real AWS CLI, no credentials configured")
    spec = nodes.cluster.plane.api("GET", f"/api/v1/namespaces/{kubectl.NAMESPACE}/pods/{pod}")["spec"]
    aws_env = sorted(e["name"] for c in spec["containers"] for e in c.get("env", []) if e["name"].startswith("AWS_"))
    checks.expect(aws_env == ["AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_STS"], f"the pod's AWS_* environment is {aws_env}")
    show.say("The pod's environment has no AWS keys: only the manifest's AWS_DEFAULT_REGION and AWS_ENDPOINT_URL_STS.")
    code, output = _caller_identity(nodes, pod)
    checks.expect(code == 0, f"aws sts get-caller-identity exited {code}")
    arn = str(json.loads(output).get("Arn", ""))
    checks.expect(checks.ASSUMED_ROLE_ARN.match(arn), f"the CLI's identity is {arn!r}, not the assumed KiamTesterRole")
    show.ok(f"the pod is {arn}")


def revoke(nodes: Nodes, pod: str) -> None:
    show.step("Remove the annotation: the pod loses the role at once")
    kubectl.run(nodes.cluster.plane, "annotate", "pods", pod, f"{kubectl.ROLE_ANNOTATION}-")
    began = time.monotonic()
    attempts = 1
    code, output = _caller_identity(nodes, pod)
    while code == 0 and time.monotonic() - began < REVOCATION_SECONDS:
        show.say("(still served: the revocation had not reached the node's proxy yet; again)")
        attempts += 1
        code, output = _caller_identity(nodes, pod)
    checks.expect(code != 0, f"aws sts get-caller-identity still succeeded {REVOCATION_SECONDS:.0f}s after the annotation "
                             "was removed")
    checks.expect(checks.NO_CREDENTIALS in output, f"expected {checks.NO_CREDENTIALS!r}, the CLI said: {output}")
    show.ok(f"{'the very next command' if attempts == 1 else f'attempt {attempts}'} fails: \"{checks.NO_CREDENTIALS}\"")
    kubectl.run(nodes.cluster.plane, "get", "podrolebindings")


def closing(nodes: Nodes) -> None:
    show.step("What STS and the nodes' own metadata services saw")
    assumed = nodes.sts.stats()["assumed"]
    calls = ", ".join(f"{arn.rsplit('/', 1)[-1]} x{count}" for arn, count in sorted(assumed.items()))
    show.say(f"AssumeRole calls, counted at the STS front: {calls or 'none'}")
    show.say("(the operator assumes its assumeRoleArn, then the pod's role with it: one call per role, shared by")
    show.say("every pod using it, refreshed at half-life)")
    checks.expect(any(arn.endswith("/KiamTesterRole") for arn in assumed), "the operator never assumed KiamTesterRole")
    _node_role_receivers(nodes)


def _node_role_receivers(nodes: Nodes) -> None:
    """Who got the node's own role: the nodes themselves (the proxies, for the operator's node identity) and the
    operator's pods, which use the node's identity by design; never any other pod."""
    assert nodes.release is not None
    operators = {p["status"].get("podIP"): p["metadata"]["name"] for p in nodes.release.pods("operator")}
    receivers: collections.Counter[str] = collections.Counter()
    for member in nodes.cluster.nodes.values():
        for record in member.metadata_requests():
            if record["credentials"]:
                source = record["source"]
                receivers[f"{member.name} itself" if source == member.ip else operators.get(source, source)] += 1
    listed = ", ".join(f"{who} x{count}" for who, count in sorted(receivers.items()))
    show.say(f"The nodes' metadata services gave {clusters.NODE_ROLE_NAME} to: {listed or 'nobody'}")
    show.say("(a node itself: its proxy, fetching the operator's node identity; an operator pod: the operator's own")
    show.say("identity, which it may read directly while its node's proxy has no iptables rule yet)")
    leaks = nodes.release.node_role_leaks()
    checks.expect(not leaks, f"a pod received the node's role from its node's metadata service: {leaks}")
    show.ok("no other pod ever received the node's role")


def run(nodes: Nodes, workdir: Path) -> None:
    kubectl.permit_roles(nodes.cluster.plane)
    pod = deploy_tester(nodes, workdir)
    read_metadata(nodes, pod)
    caller_identity(nodes, pod)
    revoke(nodes, pod)
    closing(nodes)
