"""Stand-in mode: the guide's test chapter on the stand-in cluster (no kubelets); every result is checked.

1. ``kubectl annotate namespace default iam.amazonaws.com/permitted='.*'``
2. ``kubectl apply -f`` the aws-iam-tester Deployment (role KiamTesterRole);
   the demo plays the scheduler and the kubelet for its pod (none run here).
3. ``kubectl get podrolebindings``, ``kubectl get pods -o wide``
4. as the pod: the metadata API, then ``aws sts get-caller-identity``
   (the real AWS CLI) prints the assumed role;
5. ``kubectl annotate pods … iam.amazonaws.com/role-``: the same command
   now fails with "Unable to locate credentials".
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from demo import checks, kubectl, show
from demo import standin_cluster as cluster
from demo import standin_pods as pods
from localcluster.controlplane import kubelet
from localcluster import stack as stacks

NAMESPACE = kubectl.NAMESPACE
MANIFEST = Path(__file__).resolve().parent / "aws-iam-tester.yaml"


def _aws_cli() -> str:
    """The AWS CLI of this virtualenv (awscli, a dev dependency), as the pod's image would carry it."""
    candidate = Path(sys.executable).parent / "aws"
    found = str(candidate) if candidate.exists() else shutil.which("aws")
    checks.expect(found, "the AWS CLI is not installed (run `make venv`)")
    return str(found)


def _pod_created_by_deployment(c: cluster.Cluster) -> str:
    def created() -> str | None:
        listed = c.cp.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=app%3Daws-iam-tester")
        names = [p["metadata"]["name"] for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]
        return names[0] if names else None

    return stacks.wait_for(created, 30, "the ReplicaSet's pod")


def _untainted(c: cluster.Cluster, node: stacks.Node) -> None:
    stacks.wait_for(lambda: stacks.TAINT not in c.stack.node_taints(node), 30, f"{node.name} without the start-up taint")


def deploy_tester(c: cluster.Cluster, place: pods.Place) -> str:
    show.step("The guide's chapter 4: the aws-iam-tester Deployment (annotation iam.amazonaws.com/role: KiamTesterRole)")
    kubectl.run(c.cp, "apply", "-f", str(MANIFEST), shown="apply -f demo/aws-iam-tester.yaml")
    pod = _pod_created_by_deployment(c)
    node = c.pod_node
    show.say(f"The Deployment and ReplicaSet controllers created pod {pod}.")
    show.say("No kube-scheduler and no kubelet run here: the demo plays both, with the API calls they make.")
    _untainted(c, node)
    show.say(f"scheduler: {node.name} has lost its start-up taint {stacks.TAINT} (the operator removed it")
    show.say(f"  once {node.name}'s proxy had its snapshot), so the pod may go there: bound to {node.name}.")
    kubelet.bind_pod(c.cp, NAMESPACE, pod, node.name)
    kubelet.set_pod_status(c.cp, NAMESPACE, pod, pod_ip=place.pod_ip)
    where = (f"the address of network namespace {place.pod.netns}" if isinstance(place, pods.NetnsPlace)
             else "the loopback fallback's pod address")
    show.say(f"kubelet: pod Running with podIP {place.pod_ip} ({where}).")
    c.stack.wait_binding_phase(NAMESPACE, pod, "Bound", timeout=30)
    kubectl.run(c.cp, "get", "podrolebindings")
    kubectl.run(c.cp, "get", "pods", "-o", "wide")
    _what_each_node_holds(c, node)
    return pod


def _held(node: stacks.Node) -> tuple[int, int]:
    """(pod entries, role credential sets) the node's proxy holds, from its /metrics."""
    values = {}
    for line in node.proxy.metrics().splitlines():
        name, _, value = line.partition(" ")
        if name in ("podiam_proxy_pods", "podiam_proxy_roles"):
            values[name] = int(float(value))
    return values["podiam_proxy_pods"], values["podiam_proxy_roles"]


def _what_each_node_holds(c: cluster.Cluster, pod_node: stacks.Node) -> None:
    show.say("What each node's proxy holds (gauges podiam_proxy_pods and podiam_proxy_roles of its /metrics):")
    stacks.wait_for(lambda: _held(pod_node) == (1, 1), 10, f"{pod_node.name}'s proxy holding the pod and its role")
    for node in c.stack.nodes:
        held = _held(node)
        show.say(f"  {node.name}: {held[0]} pod(s), {held[1]} role credential set(s)")
        expected = (1, 1) if node is pod_node else (0, 0)
        checks.expect(held == expected, f"{node.name}'s proxy holds {held}, expected {expected}")
    show.ok("only the pod's node holds its credentials")


def _probe(place: pods.Place, env: dict[str, str], port: int, *extra: str) -> list[dict[str, Any]]:
    done = place.probe(env, port, *extra)
    checks.expect(done.returncode == 0, f"the metadata probe failed in the pod: {done.stderr.strip()}")
    return list(json.loads(done.stdout))


def _show_requests(place: pods.Place, port: int, results: list[dict[str, Any]], pod: str) -> None:
    host, real_port = place.metadata_endpoint(port)
    base = f"http://{host}" if real_port == 80 else f"http://{host}:{real_port}"
    show.metadata_requests(results, base, prompt=f"{pod}$")


def read_metadata(c: cluster.Cluster, place: pods.Place, pod: str, home: Path) -> None:
    show.step("Inside the pod: the EC2 metadata API (secrets masked here)")
    if isinstance(place, pods.NetnsPlace):
        show.say(f"Run in network namespace {place.pod.netns} (ip netns exec) by demo/imds_probe.py, as curl would;")
        show.say(f"the proxy's DNAT rule (chain PODIAM-PROXY) sends 169.254.169.254:80 to {c.pod_node.ip}:{c.pod_node.proxy.metadata_port}:")
    else:
        show.say(f"Run from 127.0.0.1 (the pod's address in this mode) by demo/imds_probe.py, as curl would:")
    port = c.pod_node.proxy.metadata_port
    results = _probe(place, pods.pod_environment(home), port)
    _show_requests(place, port, results, pod)
    checks.role_served(results)
    show.ok("the pod reads its role's temporary credentials from the metadata API")


def _caller_identity(c: cluster.Cluster, place: pods.Place, pod: str, home: Path) -> tuple[Any, ...]:
    argv = [_aws_cli(), "sts", "get-caller-identity", "--endpoint-url", c.moto_server.url]
    env = place.cli_environment(home, c.pod_node.proxy.metadata_port)
    checks.expect(not any(k in env for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")),
                  "the pod's environment must hold no AWS credentials")
    override = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    shown_env = [f"AWS_EC2_METADATA_SERVICE_ENDPOINT={override}"] if override else []
    show.command([*shown_env, "aws", *argv[1:]], prompt=f"{pod}$")
    done = place.run(argv, env, timeout=60)
    show.output(done.stdout + done.stderr)
    return done.returncode, done.stdout, done.stderr


def caller_identity(c: cluster.Cluster, place: pods.Place, pod: str, home: Path) -> str:
    show.step("Inside the pod: the real AWS CLI, no credentials configured")
    if isinstance(place, pods.NetnsPlace):
        show.say("No endpoint override: the CLI asks http://169.254.169.254 as on EC2. STS is moto, on node-1's")
        show.say("address so the pod can reach it.")
    else:
        show.say("The CLI's metadata endpoint points at node-1's proxy (loopback fallback); STS is moto.")
    show.say("The pod's environment: AWS_DEFAULT_REGION=ap-northeast-1 (the manifest's), AWS_CONFIG_FILE and")
    show.say("AWS_SHARED_CREDENTIALS_FILE=/dev/null; no AWS_* keys.")
    code, out, err = _caller_identity(c, place, pod, home)
    checks.expect(code == 0, f"aws sts get-caller-identity exited {code}: {err.strip()}")
    arn = str(json.loads(out).get("Arn", ""))
    checks.expect(checks.ASSUMED_ROLE_ARN.match(arn), f"the CLI's identity is {arn!r}, not the assumed KiamTesterRole")
    show.ok(f"the pod is {arn}")
    assumed = c.sts.stats()["assumed"]
    calls = ", ".join(f"{role_arn.rsplit('/', 1)[-1]} x{count}" for role_arn, count in sorted(assumed.items()))
    show.say(f"(the operator's AssumeRole calls so far, counted at the STS front: {calls})")
    return arn


def revoke(c: cluster.Cluster, place: pods.Place, pod: str, home: Path) -> None:
    show.step("Remove the annotation: the pod loses the role at once")
    kubectl.run(c.cp, "annotate", "pods", pod, f"{kubectl.ROLE_ANNOTATION}-")
    code, out, err = _caller_identity(c, place, pod, home)
    checks.expect(code != 0, f"aws sts get-caller-identity still succeeded after the annotation was removed: {out.strip()}")
    checks.expect(checks.NO_CREDENTIALS in err, f"expected {checks.NO_CREDENTIALS!r}, the CLI said: {err.strip()}")
    show.ok(f"the very next command fails: \"{checks.NO_CREDENTIALS}\"")
    port = c.pod_node.proxy.metadata_port
    results = _probe(place, pods.pod_environment(home), port)
    _show_requests(place, port, results[1:2], pod)
    checks.expect(results[1].get("status") == 404, f"the role listing answered {results[1].get('status')}, expected 404")
    kubectl.run(c.cp, "get", "podrolebindings")


def run(c: cluster.Cluster, place: pods.Place, workdir: Path) -> None:
    home = workdir / "pod-home"
    home.mkdir(exist_ok=True)
    kubectl.permit_roles(c.cp)
    pod = deploy_tester(c, place)
    read_metadata(c, place, pod, home)
    caller_identity(c, place, pod, home)
    revoke(c, place, pod, home)
