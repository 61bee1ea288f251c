"""Stand-in mode: start every component the demo needs as local processes, registering their clean-up.

The real control plane (localcluster/controlplane), moto's IAM and STS, then
podiam itself through :class:`localcluster.stack.Stack`: the operator as a
real process in TLS ``auto`` mode (it creates the CA and certificates in
Secrets of podiam-system), and one real proxy process per node, started with
the files of the ``podiam-proxy-tls`` Secret as the DaemonSet's Secret volume
would give them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from demo import iam, kubectl, show
from demo import standin_pods as pods
from localcluster.controlplane import ControlPlane, build
from localcluster import moto
from localcluster import stack as stacks

NODE_0_ADDRESS = "127.0.0.10"


@dataclasses.dataclass
class Cluster:
    cp: ControlPlane
    moto_server: moto.MotoServer
    sts: moto.StsFront
    roles: iam.Roles
    stack: stacks.Stack

    @property
    def pod_node(self) -> stacks.Node:
        return self.stack.nodes[1]


def start(place: pods.Place, workdir: Path, cleanup: contextlib.ExitStack) -> Cluster:
    show.step("Control plane: etcd, kube-apiserver, kube-controller-manager (localcluster/controlplane)")
    build.ensure_built()  # shows its progress when it has to build
    cp = ControlPlane.start(workdir / "controlplane")
    cleanup.callback(cp.stop)
    show.say(f"API server {cp.server}, ready in {cp.startup_seconds:.1f}s.")
    show.say(f"kubectl below runs with KUBECONFIG={cp.kubeconfig}")

    show.step("AWS (the guide's chapter 1, IAM): moto's IAM and STS")
    server = moto.MotoServer(workdir, host=place.sts_host).start()
    cleanup.callback(server.stop)
    front = moto.StsFront(workdir, server.url).start()  # counts the operator's STS calls
    cleanup.callback(front.stop)
    roles = iam.create_roles(server.url)
    show.say(f"moto_server at {server.url} (account {moto.ACCOUNT_ID}); created in its IAM:")
    for line in roles.lines:
        show.say(f"  {line}")

    show.step("podiam: the operator (TLS auto) and one proxy per node")
    stack = stacks.Stack(
        cp, front, workdir / "stack", nodes=2, tls="auto",
        node_addresses=[NODE_0_ADDRESS, place.node_address],
        node_proxy_args={1: place.proxy_args()},
        operator_env={"PODIAM_ASSUME_ROLE_ARN": roles.operator_arn},
        anti_entropy=30.0,
    )
    cleanup.callback(stack.stop)
    stack.start()
    show.say(f"operator: python -m podiam_operator (assumeRoleArn {roles.operator_arn}, STS via {front.url})")
    show.say("It created the CA and the certificates in Secrets (no cfssl, no cert-manager):")
    kubectl.run(cp, "-n", stacks.PROXY_NAMESPACE, "get", "secrets")
    assert stack.server_files is not None
    show.say(f"The demo wrote Secret {stacks.PROXY_TLS_SECRET}'s tls.crt, tls.key and ca.crt to")
    show.say(f"  {stack.server_files.cert.parent}/")
    show.say("for the proxies, as the proxy DaemonSet's Secret volume would.")
    for node in stack.nodes:
        flags = " ".join(place.proxy_args()) if node.index == 1 else ""
        show.say(f"{node.name} ({node.ip}): python -m metadata_proxy --bind-address {node.ip} "
                 f"--metadata-port {node.proxy.metadata_port} --control-port {node.proxy.control_port} "
                 f"--tls-cert .../tls.crt ... {flags}".rstrip())
    if place.proxy_args():
        show.say("node-0's proxy runs without --iptables: both nodes share this machine's nat table, where only")
        show.say("one proxy's DNAT rule can live (on real nodes, every proxy has --iptables).")
    show.ok("both proxies are ready (they received the operator's snapshot over mutual TLS)")
    return Cluster(cp=cp, moto_server=server, sts=front, roles=roles, stack=stack)
