"""The guide's test chapter on real pods: its Deployment, the AWS CLI inside it, and a credential sampler."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from localcluster.controlplane import cluster as clusters
from localcluster import pods

REPO = Path(__file__).resolve().parents[1]
GUIDE_DEPLOYMENT = REPO / "demo" / "aws-iam-tester.yaml"
GUIDE_IMAGE = "garland/aws-cli-docker:latest"


def deployment(cluster: clusters.Cluster, sts_url: str, *, name: str = "aws-iam-tester", replicas: int = 1,
               node: str | None = None) -> dict[str, Any]:
    """The guide's Deployment with two changes this machine needs: the AWS CLI image built here (no registry is
    reachable) and the STS endpoint (moto through the nodes' relay: no route to AWS)."""
    manifest: dict[str, Any] = yaml.safe_load(GUIDE_DEPLOYMENT.read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["replicas"] = replicas
    manifest["spec"]["selector"]["matchLabels"]["app"] = name
    template = manifest["spec"]["template"]
    template["metadata"]["labels"]["app"] = name
    (container,) = template["spec"]["containers"]
    assert container["image"] == GUIDE_IMAGE
    container["image"] = cluster.images["aws-cli"].ref
    container["env"].append({"name": "AWS_ENDPOINT_URL_STS", "value": cluster.url(sts_url)})
    template["spec"]["terminationGracePeriodSeconds"] = 1
    if node:
        template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return manifest


def caller_identity(cluster: clusters.Cluster, namespace: str, pod: str) -> tuple[int, str]:
    """``kubectl exec POD -- aws sts get-caller-identity``: (exit code, stdout + stderr)."""
    done = cluster.plane.kubectl("exec", "-n", namespace, pod, "--", "sh", "-c", "aws sts get-caller-identity 2>&1; echo \"exit=$?\"")
    output, _, code = done.rstrip().rpartition("exit=")
    return int(code), output.strip()


# A pod's loop asking its 169.254.169.254 for credentials as an SDK does (IMDSv2 token, role listing, then
# the role's document), every INTERVAL seconds, one JSON line per attempt on stdout (kubectl logs).
SAMPLER = textwrap.dedent("""
    import json, sys, time, urllib.request
    interval = float(sys.argv[1])
    def call(method, path, headers):
        req = urllib.request.Request("http://169.254.169.254" + path, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=1) as r:
            return r.read().decode()
    while True:
        started = time.time()
        line = {"t": round(started, 3)}
        try:
            token = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
            h = {"X-aws-ec2-metadata-token": token}
            role = call("GET", "/latest/meta-data/iam/security-credentials/", h).strip()
            line["role"] = role
            doc = json.loads(call("GET", "/latest/meta-data/iam/security-credentials/" + role, h))
            line.update(key=doc["AccessKeyId"], expiration=doc["Expiration"], code=doc["Code"])
        except urllib.error.HTTPError as e:
            line["status"] = e.code
        except Exception as e:
            line["error"] = type(e).__name__
        print(json.dumps(line), flush=True)
        time.sleep(max(0.0, interval - (time.time() - started)))
""")


def sampler(name: str, cluster: clusters.Cluster, *, node: str | None = None, role: str | None = None,
            interval: float = 0.25, **options: Any) -> dict[str, Any]:
    """A pod that samples its credentials from its first instant (python in the AWS CLI image)."""
    annotations = {"iam.amazonaws.com/role": role} if role else {}
    return pods.pod(name, cluster.images["aws-cli"].ref, ["python3", "-c", SAMPLER, str(interval)], restart="Always",
                    node=node, annotations=annotations, **options)


def samples(cluster: clusters.Cluster, namespace: str, pod: str) -> list[dict[str, Any]]:
    logs = cluster.plane.kubectl("logs", "-n", namespace, pod)
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


def node_role_leaks(cluster: clusters.Cluster, operator_ips: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every answer a node's metadata service gave with credentials to a pod.

    The node itself is expected (the proxy's upstream for the operator's node
    identity), and so are the operator's own pods (``operator_ips``): the node
    identity is theirs, and before a node's proxy has its rule in place they
    reach the metadata service directly, as Kiam's server did on the host network.
    """
    leaks = []
    for member in cluster.nodes.values():
        allowed = {member.ip, *operator_ips}
        leaks += [r for r in member.metadata_requests() if r["credentials"] and r["source"] not in allowed]
    return leaks
