"""The bench's pods: the guide's Deployment with entrypoints that log what the pod saw, and when.

Every time below is Unix seconds from the node's clock, which is this
machine's (containers share its kernel), so it compares with the watch's.
"""

from __future__ import annotations

import copy
import textwrap
from typing import Any

from localcluster.controlplane import cluster as clusters
from localcluster import guide

POD_ROLE = "KiamTesterRole"

# The guide's `aws sts get-caller-identity`, from the container's first instant until it first succeeds
# (a JSON line per attempt), then the e2e tier's credential sampler until the pod ends.
CLI_UNTIL_SUCCESS = textwrap.dedent("""
    import json, subprocess, time
    print(json.dumps({"event": "start", "t": time.time()}), flush=True)
    while True:
        began = time.time()
        done = subprocess.run(["aws", "sts", "get-caller-identity", "--output", "json"], capture_output=True, text=True)
        line = {"event": "cli", "began": began, "t": time.time(), "rc": done.returncode}
        if done.returncode == 0:
            line["arn"] = json.loads(done.stdout)["Arn"]
        else:
            line["error"] = (done.stderr.strip().splitlines() or [""])[-1][:300]
        print(json.dumps(line), flush=True)
        if done.returncode == 0:
            break
        time.sleep(0.5)
""")

# Run in a pod (kubectl exec) around a revocation: "ready" once the role listing answers, then the start time
# of the first request that got no credentials (the proxy held no entry when it arrived: a request that finds
# one is answered at once, so the refusal is no later than that start; its 404 comes after the proxy's wait).
REFUSAL_POLLER = textwrap.dedent("""
    import json, sys, time, urllib.error, urllib.request
    url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    ready, deadline = False, time.time() + float(sys.argv[1])
    while time.time() < deadline:
        began = time.time()
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                answer.read()
            if not ready:
                print("ready", flush=True)
                ready = True
        except urllib.error.HTTPError as error:
            if ready:
                print(json.dumps({"refused": began, "status": error.code, "answered": time.time()}), flush=True)
                sys.exit(0)
        except OSError:
            pass
        time.sleep(0.01)
    print(json.dumps({"timeout": ready}), flush=True)
""")


def guide_cli(cluster: clusters.Cluster, sts_url: str, sampler_interval: float) -> dict[str, Any]:
    """The guide's Deployment (0 replicas): the AWS CLI from the first instant, then the sampler."""
    manifest = guide.deployment(cluster, sts_url, replicas=0)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    container["command"] = ["sh", "-c", 'python3 -c "$0" && exec python3 -c "$1" "$2"',
                            CLI_UNTIL_SUCCESS, guide.SAMPLER, str(sampler_interval)]
    container.pop("args", None)
    return manifest


def fast_start(cluster: clusters.Cluster, sts_url: str, image_ref: str) -> dict[str, Any]:
    """The guide's Deployment (0 replicas) running fast_start/main.go: the AWS SDK for Go v2 at its first instant."""
    manifest = copy.deepcopy(guide.deployment(cluster, sts_url, name="fast-start", replicas=0))
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    container.update(image=image_ref, imagePullPolicy="Never")
    container.pop("command", None)
    container.pop("args", None)
    # The Go SDK reads AWS_REGION, not the guide's AWS_DEFAULT_REGION.
    region = next(e["value"] for e in container["env"] if e["name"] == "AWS_DEFAULT_REGION")
    container["env"].append({"name": "AWS_REGION", "value": region})
    return manifest
