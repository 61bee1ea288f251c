"""Real-node mode: two real nodes, moto's IAM and STS, then podiam installed with ``helm install``.

The nodes come from localcluster/controlplane (``Cluster``): each a kubelet,
containerd, runc and the CNI bridge plugin in a network namespace of its own,
running podiam's images built here (localcluster/images). ``Cluster`` keeps them on
this machine: IP forwarding stays off in the root namespace, no node has a
route off it, and each node's 169.254.169.254 is a stand-in EC2 metadata
service inside that node's namespace only. The chart gets a user's values
only (localcluster/release.py), passed as the ``--set`` flags shown on screen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from demo import checks, iam, kubectl, show
from localcluster import helm as helms
from localcluster.controlplane import cluster as clusters
from localcluster.controlplane import network
from localcluster.controlplane.lifetime import started_cluster
from localcluster import release as releases
from localcluster import moto, netns
from localcluster.stack import TAINT

NODES = 2
POD_NETWORK = ipaddress.ip_network(network.POD_SUBNETS)
WHY = ("running as root, IP forwarding off: two real nodes (kubelet, containerd, runc, CNI bridge), each in its "
       "own network namespace; podiam installed with helm; the AWS CLI runs in a real pod")


class NodesFailed(RuntimeError):
    """The real nodes could not start; the message says why, in one line."""


@dataclasses.dataclass
class Nodes:
    cluster: clusters.Cluster
    moto_server: moto.MotoServer
    sts: moto.StsFront
    release: releases.Release | None = None


def unavailable() -> str | None:
    """Why real nodes cannot run here (None: try; only starting them tells whether a node starts)."""
    if os.geteuid() != 0:
        return "not root (they need network namespaces, containerd and a kubelet)"
    reason = netns.why_not()
    if reason:
        return reason
    if netns.forwarding() != "0":
        return "net.ipv4.ip_forward is on in the root namespace (the nodes refuse to start; the demo never changes it)"
    return None


def start_nodes(workdir: Path, cleanup: contextlib.ExitStack) -> Nodes:
    """The control plane and two Ready nodes; :class:`NodesFailed` if they cannot start (having removed
    whatever of them had started)."""
    show.step("A cluster with two real nodes (localcluster/controlplane): control plane, kube-scheduler, kubelets")
    guard = netns.RejectGuard("podiam-demo-nodes-guard")
    cleanup.callback(guard.remove)
    guard.install()
    # moto starts after the nodes (nothing asks STS before the operator does), but its ports must be known now:
    # each node's relay forwards them to this machine's loopback.
    server = moto.MotoServer(workdir)
    front = moto.StsFront(workdir, server.url)  # counts the operator's STS calls
    try:
        # Registered with the start-up taint, as the README's install tells users to: no pod but podiam's own
        # lands on a node before its proxy intercepts 169.254.169.254 there.
        taints = {f"node-{index}": [f"{TAINT}=true:NoSchedule"] for index in range(NODES)}
        cluster = cleanup.enter_context(
            started_cluster(nodes=NODES, sts_endpoint=server.url, forward_ports=[front.port], taints=taints))
    except Exception as error:  # any reason a node did not start is a reason to fall back
        raise NodesFailed(_first_line(error)) from error
    cluster.check_safety()
    show.say(f"Ready in {cluster.startup_seconds:.1f}s; cluster folder {cluster.dir}; "
             f"kubectl and helm below use KUBECONFIG={cluster.plane.kubeconfig}")
    for member in cluster.nodes.values():
        show.say(f"{member.name}: network namespace {member.netns}, address {member.ip}, pods in "
                 f"{member.record.pod_subnet} behind {network.POD_BRIDGE}")
    show.say(f"Both registered with the start-up taint {TAINT}=true:NoSchedule (the README's install, step 2).")
    show.say(f"REJECT rule for 169.254.169.254 first in this machine's OUTPUT and FORWARD ({guard.comment}).")
    kubectl.run(cluster.plane, "get", "nodes", "-o", "wide")
    ready = [n for n in cluster.plane.api("GET", "/api/v1/nodes")["items"] if _condition(n, "Ready")]
    checks.expect(len(ready) == NODES, f"{len(ready)} nodes Ready, expected {NODES}")
    show.ok(f"{NODES} real nodes Ready")
    return Nodes(cluster=cluster, moto_server=server, sts=front)


def start_aws(nodes: Nodes, cleanup: contextlib.ExitStack) -> iam.Roles:
    show.step("AWS (the guide's chapter 1, IAM): moto's IAM and STS")
    cleanup.callback(nodes.moto_server.stop)
    nodes.moto_server.start()
    cleanup.callback(nodes.sts.stop)
    nodes.sts.start()
    roles = iam.create_roles(nodes.moto_server.url)
    show.say(f"moto_server at {nodes.moto_server.url} (account {moto.ACCOUNT_ID}); pods reach it through the nodes' "
             f"relay at {nodes.cluster.url(nodes.sts.url)}; created in its IAM:")
    for line in roles.lines:
        show.say(f"  {line}")
    show.say(f"Each node's 169.254.169.254 serves {clusters.NODE_ROLE_NAME} (an EKS node's instance role).")
    return roles


def set_flags(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``values`` as the ``--set`` flags a user types, one per leaf."""
    flags = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flags += set_flags(value, f"{path}.")
        else:
            # Image tags are hashes; one of digits only would become a number through --set.
            flags += ["--set-string" if key == "tag" else "--set", f"{path}={value}"]
    return flags


def install(nodes: Nodes, roles: iam.Roles) -> releases.Release:
    show.step("The guide's chapter 3: helm install (no certificates to prepare: TLS auto)")
    cluster = nodes.cluster
    helm = helms.Helm(helms.install_helm())
    release = nodes.release = releases.Release(cluster, helm, nodes.sts.url)
    checks.expect(release.values["operator"]["assumeRoleArn"] == roles.operator_arn,
                  "the chart's assumeRoleArn is not the role the demo created")
    show.say("The values a user sets: the images (built here, loaded into the nodes), the operator's assumeRoleArn")
    show.say("(Kiam's server.assumeRoleArn), the STS endpoint (moto through the relay: no route to AWS here) and")
    show.say(f"the pods' interface ({network.POD_BRIDGE}, the CNI bridge). Everything else is the chart's default.")
    command = ["install", release.name, "./charts/podiam", "-n", release.namespace, "--create-namespace", "--wait",
               "--timeout=110s"]
    flags = set_flags(release.values)
    show.line(" ".join(["helm", *command]) + " \\")
    pairs = [f"{flag} {value}" for flag, value in zip(flags[::2], flags[1::2])]
    for index, pair in enumerate(pairs):
        show.line(f"  {pair}" + (" \\" if index < len(pairs) - 1 else ""), prompt=" ")
    command[2] = str(helm.chart)
    done = helm.run(*command, *flags, f"--kubeconfig={cluster.plane.kubeconfig}", check=False)
    show.output(_shortened(done.stdout + done.stderr))
    checks.expect(done.returncode == 0, f"helm install exited {done.returncode}")
    release.wait_proxies_ready(timeout=60)
    kubectl.run(cluster.plane, "get", "pods", "-n", release.namespace, "-o", "wide")
    _check_placement(nodes, release)
    checks.eventually(lambda: not _tainted(cluster), 30, "the start-up taint gone from every node")
    show.ok("the operator removed the start-up taint from both nodes once their proxies had their snapshots")
    return release


def _shortened(output: str) -> str:
    """helm's output up to the first paragraph of NOTES.txt: its next steps are what the demo does below."""
    head, notes_marker, notes = output.partition("NOTES:\n")
    first, blank, rest = notes.partition("\n\n")
    if not blank:
        return output
    return f"{head}{notes_marker}{first}\n... ({len(rest.splitlines())} more lines of NOTES.txt: next steps, done below)"


def _check_placement(nodes: Nodes, release: releases.Release) -> None:
    operators = [p for p in release.pods("operator") if p["status"].get("phase") == "Running"]
    checks.expect(operators, "no operator replica is Running")
    on_pod_network = all(ipaddress.ip_address(p["status"]["podIP"]) in POD_NETWORK for p in operators)
    checks.expect(on_pod_network, "an operator replica is not on the pod network")
    proxies = {p["spec"]["nodeName"]: p["status"].get("podIP") for p in release.pods("proxy")}
    expected = {name: member.ip for name, member in nodes.cluster.nodes.items()}
    checks.expect(proxies == expected, f"proxies (node: IP) {proxies}, expected one on each node's own IP {expected}")
    show.ok(f"{len(operators)} operator replicas on the pod network ({POD_NETWORK}); a proxy on every node, "
            "on the node's own address (hostNetwork), Ready")


def _tainted(cluster: clusters.Cluster) -> list[str]:
    """The nodes that still carry the start-up taint."""
    listed = cluster.plane.api("GET", "/api/v1/nodes")["items"]
    return [n["metadata"]["name"] for n in listed if any(t["key"] == TAINT for t in n["spec"].get("taints", []))]


def _condition(item: Mapping[str, Any], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in item.get("status", {}).get("conditions", []))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else '(no message)'}"


def logs(nodes: Nodes) -> str:
    """The last lines of the operator's and proxies' logs, for a failed run."""
    if nodes.release is None:
        return ""
    plane = nodes.cluster.plane
    parts = ["--- kubectl get pods -A -o wide ---", plane.kubectl("get", "pods", "-A", "-o", "wide", check=False)]
    for component in ("operator", "proxy"):
        selector = f"app.kubernetes.io/instance={nodes.release.name},app.kubernetes.io/component={component}"
        parts.append(f"--- {component} (kubectl logs -n {nodes.release.namespace} -l {selector} --tail=15) ---")
        parts.append(plane.kubectl("logs", "-n", nodes.release.namespace, "-l", selector, "--tail=15",
                                   "--prefix", check=False))
    return "\n".join(parts)
