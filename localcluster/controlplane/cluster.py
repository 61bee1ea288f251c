"""The local cluster with real nodes: the control plane plus kube-scheduler, and
kubelet + containerd + runc + CNI nodes, each in its own network namespace.

    with Cluster.start(directory, nodes=2, sts_endpoint=moto.url) as cluster:
        cluster.plane                       # the ControlPlane (kubectl, api, kubeconfig)
        cluster.nodes["node-0"].ip          # a Node: exec in its namespace, its metadata service's request log
        cluster.add_node("node-2", taints=["podiam.io/agent-not-ready=true:NoSchedule"])
        cluster.images["podiam-proxy"].ref  # podiam's images, loaded into every node
        cluster.url(moto.url)               # the URL under which pods and nodes reach a root-loopback server

See network.py for the layout and why it is safe, node.py for one node, and
README.md for the figures.
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from localcluster.controlplane import build, controlplane, image_root, kubelet, network, node
from localcluster.images import images as podiam_images

STATE_FILE = "cluster.json"
# With real kubelets, the controllers the kubelet stand-ins could not have:
# node-lifecycle removes the not-ready taint a node registers with (and taints
# a node whose kubelet stops), taint-eviction evicts from it, pod GC deletes
# the pods of removed nodes, endpoints and endpointslice serve the chart's Services.
CONTROLLERS = (*controlplane.DEFAULT_CONTROLLERS, "node-lifecycle-controller", "taint-eviction-controller",
               "pod-garbage-collector-controller", "endpoints-controller", "endpointslice-controller")
# The API server calls admission webhooks (and aggregated APIs) at their Service's endpoints, the pods' own
# addresses, which the root namespace reaches through the nodes; without this it would dial the Service's
# cluster IP, which only a kube-proxy on the API server's host could route.
APISERVER_FLAGS = ("--enable-aggregator-routing=true",)
NODE_ROLE_NAME = "my-eks-node-role"  # the name demo/iam.py creates in moto
ACCOUNT_ID = "123456789012"  # moto's default account


class ClusterError(RuntimeError):
    pass


class Cluster:
    """A control plane with a scheduler and real nodes; :meth:`stop` removes every trace of it."""

    def __init__(self, plane: controlplane.ControlPlane, switch: network.Switch, *, detached: bool,
                 sts_endpoint: str | None, forward_ports: Sequence[int], region: str,
                 built_images: Mapping[str, podiam_images.Image]) -> None:
        self.plane = plane
        self.dir = plane.dir
        self.switch = switch
        self.detached = detached
        self.sts_endpoint = sts_endpoint
        self.forward_ports = tuple(forward_ports)
        self.region = region
        self.images = dict(built_images)
        self.image_root: Path | None = None  # a containerd root holding the images, linked into each node
        self.nodes: dict[str, node.Node] = {}
        self.created_host_folders: list[str] = []
        self.startup_seconds = 0.0
        self._lock = threading.Lock()  # nodes start in parallel

    @property
    def node_role_arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT_ID}:role/{NODE_ROLE_NAME}"

    @property
    def api_port(self) -> int:
        return int(urllib.parse.urlsplit(self.plane.server).port or 443)

    # ---- life cycle ----------------------------------------------------

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        nodes: int | Sequence[str] = 2,
        sts_endpoint: str | None = None,
        forward_ports: Iterable[int] = (),
        region: str = "us-east-1",
        detached: bool = False,
        taints: Mapping[str, Sequence[str]] | None = None,
        progress: bool = True,
    ) -> Cluster:
        """The control plane (with kube-scheduler) and ``nodes`` nodes (a count, or names), all Ready.

        ``sts_endpoint``: moto's URL on the root namespace's loopback; each node's
        169.254.169.254 then serves the node role's credentials from it.
        ``forward_ports``: root-loopback ports pods and nodes reach at
        ``HOST_SERVICES_ADDRESS`` (the STS endpoint's port is added).
        ``taints``: node name -> taints it registers with (``key=value:Effect``).
        """
        began = time.monotonic()
        if network.forwarding() != "0":
            raise ClusterError("net.ipv4.ip_forward is on in the root namespace: refusing to start nodes")
        built_images = podiam_images.ensure_built(progress=progress)
        prepared_root = image_root.prepared(built_images)
        build.ensure_built(progress)
        ports = list(forward_ports)
        if sts_endpoint:
            ports.append(int(urllib.parse.urlsplit(sts_endpoint).port or 80))
        plane = controlplane.ControlPlane.start(directory, detached=detached, scheduler=True, controllers=CONTROLLERS,
                                                apiserver_flags=APISERVER_FLAGS)
        switch = network.Switch(secrets.token_hex(2))
        cluster = cls(plane, switch, detached=detached, sts_endpoint=sts_endpoint, forward_ports=sorted(set(ports)),
                      region=region, built_images=built_images)
        cluster.image_root = prepared_root
        try:
            cluster.created_host_folders = node.host_folders_missing()
            cluster._save()  # before anything exists outside the folder, so a killed run is cleaned up
            switch.create()
            cluster._save()
            names = [f"node-{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
                futures = [pool.submit(cluster.add_node, name, (taints or {}).get(name, ())) for name in names]
                for future in futures:
                    future.result()
        except BaseException:
            cluster.stop()
            raise
        cluster.startup_seconds = time.monotonic() - began
        cluster._save()
        return cluster

    def add_node(self, name: str, taints: Iterable[str] = (), labels: Mapping[str, str] | None = None,
                 timeout: float = 120.0) -> node.Node:
        """Start a node and return once it is Ready; ``taints`` are registered with it (``key=value:Effect``)."""
        node.check_name(name)
        with self._lock:
            if name in self.nodes:
                raise ClusterError(f"node {name} already exists")
            index = self._free_index()
            record = node.NodeRecord(
                name=name, index=index, dir=str(self.dir / "nodes" / name), netns=f"pdm-{self.switch.tag}-{name}",
                ip=self.switch.node_ip(index), pod_subnet=self.switch.pod_subnet(index),
                cgroup_root=f"/podiam-{self.switch.tag}-{name}", cni_network=f"podiam-{self.switch.tag}-{name}",
            )
            member = node.Node(record, detached=self.detached)
            self.nodes[name] = member
            self._save()
            self.switch.attach_node(record.netns, index)
            # Each node routes the others' pod subnets through them (what flannel's host-gw does).
            others = [n.record for n in self.nodes.values() if n is not member and network.netns_exists(n.record.netns)]
            network.route_pod_subnets(record.netns, [(o.pod_subnet, o.ip) for o in others])
            for other in others:
                network.route_pod_subnets(other.netns, [(record.pod_subnet, record.ip)])
            self.switch.route_pod_subnet(record.pod_subnet, record.ip)
        network.forward_kubernetes_service(record.netns, self.api_port)
        member.start_relay("relay", [self.api_port, *self.forward_ports])
        if self.sts_endpoint:
            member.start_metadata_service(self.node_role_arn, self.sts_endpoint, self.region)
        member.start_containerd(self.images["pause"].ref, self.image_root)
        podiam_images.import_into(str(record.socket), self.images.values())  # a check: they are all there already
        server = f"https://{network.HOST_SERVICES_ADDRESS}:{self.api_port}"
        member.start_kubelet(build.binary_path(), self.plane.certificate_authority(), server,
                             [kubelet.parse_taint(t) for t in taints],
                             {"podiam.io/test-node": "true", **(labels or {})})
        with self._lock:
            self._save()
        self.wait_node_ready(name, timeout)
        return member

    def remove_node(self, name: str) -> None:
        """Stop the node, remove every trace of it and its Node object."""
        member = self.nodes[name]
        member.stop()
        for other in self.nodes.values():
            if other is not member:
                other.exec("ip", "route", "del", member.record.pod_subnet, check=False)
        self.switch.unroute_pod_subnet(member.record.pod_subnet)
        try:
            self.plane.api("DELETE", f"/api/v1/nodes/{name}")
        except Exception:  # already gone, or the API server is down: nothing else depends on it
            pass
        with self._lock:
            del self.nodes[name]
            self._save()

    def stop(self) -> None:
        """Stop the nodes (in parallel), the switch and the control plane; idempotent."""
        members = list(self.nodes.values())
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(members) or 1) as pool:
            for future in [pool.submit(m.stop) for m in members]:
                future.result()
        self.nodes.clear()
        self.switch.destroy()
        node.remove_created_host_folders(self.created_host_folders)
        self.plane.stop()
        (self.dir / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---- helpers for tests ------------------------------------------------

    def url(self, root_url: str) -> str:
        """``root_url`` (a server on the root namespace's loopback, one of ``forward_ports``) as pods reach it."""
        parts = urllib.parse.urlsplit(root_url)
        if parts.port not in self.forward_ports:
            raise ClusterError(f"{root_url}: port {parts.port} is not relayed to the nodes (forward_ports)")
        return parts._replace(netloc=f"{network.HOST_SERVICES_ADDRESS}:{parts.port}").geturl()

    def wait_node_ready(self, name: str, timeout: float = 120.0) -> None:
        member = self.nodes[name]

        def ready() -> bool:
            member.check_alive()
            status = self.plane.api("GET", f"/api/v1/nodes/{name}").get("status", {})
            return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))

        controlplane.wait_until(ready, timeout, f"node {name} Ready", interval=0.2)

    def check_safety(self) -> None:
        """Forwarding off in the root namespace, and no node namespace with a route off this machine."""
        if network.forwarding() != "0":
            raise ClusterError("net.ipv4.ip_forward turned on in the root namespace")
        for member in self.nodes.values():
            route = network.default_route(member.netns)
            if route:
                raise ClusterError(f"{member.name} has a default route: {route}")

    def _free_index(self) -> int:
        used = {n.record.index for n in self.nodes.values()}
        return next(i for i in range(16) if i not in used)  # 16 /24s in the cluster's pod /20

    def _save(self) -> None:
        state = {
            "tag": self.switch.tag, "subnet": self.switch.subnet, "pod_range": self.switch.pod_range,
            "created_host_folders": self.created_host_folders,
            "nodes": [n.record.to_json() for n in self.nodes.values()],
        }
        path = self.dir / STATE_FILE
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)


def stop_directory(directory: Path) -> list[str]:
    """Remove the nodes and switch recorded in ``directory``, then stop its control plane (``down``, sweeps)."""
    stopped = []
    path = directory / STATE_FILE
    if path.exists():
        state: dict[str, Any] = json.loads(path.read_text())
        for data in state.get("nodes", []):
            record = node.NodeRecord.from_json(data)
            node.clean_up(record)
            stopped.append(record.name)
        network.Switch(state["tag"], state.get("subnet", ""), state.get("pod_range", "")).destroy()
        node.remove_created_host_folders(state.get("created_host_folders", []))
        path.unlink()
    return stopped + controlplane.stop_directory(directory)
