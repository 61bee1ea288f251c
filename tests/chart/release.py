"""The chart installed on the real API server, its workloads played by real processes.

There is no kubelet and no scheduler here, so the Deployment and the
DaemonSet never run containers. The controllers do run, though: the
DaemonSet controller creates one proxy pod per node from the chart's pod
template, the Deployment controller the operator's pods. This module then
plays scheduler and kubelet for them:

- each proxy pod is bound to its node and reported Running with the node's
  IP; a real proxy process runs with the environment of the chart's proxy
  container (fieldRefs resolved as the kubelet would) and the certificate
  files from the Secret the operator created, as the kubelet would mount them;
- the operator runs as a real process with the environment of the chart's
  operator container and, instead of the in-cluster token, a kubeconfig
  holding a token of the chart's operator ServiceAccount: it has exactly
  the chart's RBAC, nothing more.

What is not the chart's: STS is moto (``operator.sts.endpointUrl`` points
there, AWS test credentials in the environment), the proxies install no
iptables rule (network safety) and never reach a real metadata service,
and every port is a free one (through the chart's own port values).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from localcluster import helm as _helm
from localcluster.controlplane import ApiError, ControlPlane, kubelet
from localcluster import moto, processes
from localcluster import proxy as proxy_support
from localcluster.stack import wait_for

REPO = _helm.REPO
TLS_MOUNT = "/var/run/podiam/tls"
WEBHOOK_MOUNT = "/var/run/podiam/webhook"  # the chart's webhook-tls volume: an emptyDir (auto) or the Secret (secrets)
# How a refusal shows in the operator's log: kopf's APIForbiddenError, the
# API's "Forbidden" reason, or podiam's own "HTTP 403" / "(403)" messages.
FORBIDDEN = re.compile(r"[Ff]orbidden|HTTP 403|\(403\)|status=403|code\W+403")
Mutation = Callable[[list[dict[str, Any]]], None]


def _free_ports(*names: str) -> dict[str, int]:
    """Distinct ports free on every address (kopf's liveness endpoint listens on 0.0.0.0), held until all are chosen."""
    sockets = []
    try:
        for _ in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("0.0.0.0", 0))
        return {name: int(sock.getsockname()[1]) for name, sock in zip(names, sockets)}
    finally:
        for sock in sockets:
            sock.close()


def _resolve_env(container: Mapping[str, Any], fields: Mapping[str, str], tls_dir: Path,
                 secrets: Callable[[str], Mapping[str, bytes]] | None = None) -> dict[str, str]:
    """The container's environment as the kubelet builds it: fieldRefs, secretKeyRefs, then $(VAR) references in order."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            assert secrets is not None, f"{item['name']} comes from a Secret"
            data = secrets(ref["name"])
            if ref["key"] not in data and ref.get("optional"):
                continue
            value = data[ref["key"]].decode()
        elif "valueFrom" in item:
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            value = fields[field]
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(item["value"]))
        env[item["name"]] = value.replace(TLS_MOUNT, str(tls_dir)).replace(WEBHOOK_MOUNT, str(tls_dir.parent / "webhook-tls"))
    return env


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PODIAM_", "AWS_", "KUBERNETES_", "KUBECONFIG", "POD_"))}


@dataclasses.dataclass
class Node:
    name: str
    ip: str
    pod: str = ""
    process: processes.ManagedProcess | None = None


class Release:
    """One helm release of charts/podiam in its own namespace, with its own nodes."""

    def __init__(self, cp: ControlPlane, helm: _helm.Helm, workdir: Path, name: str, *, sts: moto.StsFront | None = None,
                 nodes: int = 2, node_octet: int = 40, values: Mapping[str, Any] | None = None,
                 values_files: Sequence[Path] = ()) -> None:
        self.cp = cp
        self.helm = helm
        self.workdir = workdir
        self.name = name
        self.namespace = f"{name}-system"
        self.nodes = [Node(f"{name}-node-{i}", f"127.0.0.{node_octet + i}") for i in range(nodes)]
        self.ports = _free_ports("metadata", "control", "health", "liveness", "metrics", "webhook")
        self.values: dict[str, Any] = {
            "operator": {
                **({"sts": {"endpointUrl": sts.url, "region": "us-east-1"}} if sts is not None else {}),
                "ports": {"liveness": self.ports["liveness"], "metrics": self.ports["metrics"]},
                # The metrics endpoint on loopback only, on a machine shared with other tests.
                "extraEnv": {"PODIAM_METRICS_ADDRESS": "127.0.0.1", "PODIAM_WEBHOOK_ADDRESS": "127.0.0.1"},
                "log": {"format": "plain"},
                **dict((values or {}).get("operator", {})),
            },
            "proxy": {
                "host": {"port": self.ports["metadata"]},
                "controlPort": self.ports["control"],
                "healthPort": self.ports["health"],
                **dict((values or {}).get("proxy", {})),
            },
            # The injection webhook on a free port (the operator runs as a process here, next to other releases').
            "containerCredentials": {
                **dict((values or {}).get("containerCredentials", {})),
                "webhook": {"port": self.ports["webhook"], **dict((values or {}).get("containerCredentials", {}).get("webhook", {}))},
            },
            **{k: v for k, v in (values or {}).items() if k not in ("operator", "proxy", "containerCredentials")},
        }
        self.rendered = helm.template(name, self.namespace, self.values, values_files)
        self.objects = self.rendered.objects
        self.operator: processes.ManagedProcess | None = None
        self.tls_dirs: list[Path] = []

    # --- install ----------------------------------------------------------------------------

    def fullname(self) -> str:
        return self.name if "podiam" in self.name else f"{self.name}-podiam"

    def apply(self, mutate: Mutation | None = None) -> str:
        """Server-side apply of the rendered objects (after ``mutate``): the API server validates each one."""
        if mutate is not None:
            mutate(self.objects)
        try:
            self.cp.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
        except ApiError as error:
            if error.status != 409:
                raise
        wait_for(lambda: self.cp.api("GET", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/default"), 30, "default ServiceAccount")
        manifest = yaml.safe_dump_all(self.objects, sort_keys=False)
        return self.cp.kubectl("apply", "--server-side", "--field-manager=helm", "--validate=strict", "-f", "-", input=manifest)

    def add_nodes(self, extra_taints: Mapping[int, Iterable[str]] | None = None) -> None:
        taint = f"{self.values['operator'].get('nodeTaint', 'podiam.io/agent-not-ready')}:NoSchedule"
        for index, node in enumerate(self.nodes):
            kubelet.create_node(self.cp, node.name, node.ip, taints=[taint, *((extra_taints or {}).get(index, ()))])

    def object(self, kind: str) -> dict[str, Any]:
        (found,) = [o for o in self.objects if o["kind"] == kind]
        return found

    # --- the scheduler's and the kubelet's parts ---------------------------------------------

    def _proxy_pods(self) -> dict[str, dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in self.object("DaemonSet")["spec"]["selector"]["matchLabels"].items())
        pods = self.cp.api("GET", f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={urllib.parse.quote(selector)}")["items"]
        by_node: dict[str, dict[str, Any]] = {}
        for pod in pods:
            terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            by_node[terms[0]["matchFields"][0]["values"][0]] = pod
        return by_node

    def schedule_proxy_pods(self) -> None:
        """Wait for the DaemonSet controller's pod on each of our nodes; bind it and report it Running on the node's IP."""
        def on_every_node() -> dict[str, Any] | None:
            pods = self._proxy_pods()
            return pods if all(n.name in pods for n in self.nodes) else None

        pods = wait_for(on_every_node, 60, "the DaemonSet controller's proxy pods on every node")
        for node in self.nodes:
            node.pod = pods[node.name]["metadata"]["name"]
            kubelet.bind_pod(self.cp, self.namespace, node.pod, node.name)
            kubelet.set_pod_status(self.cp, self.namespace, node.pod, pod_ip=node.ip, host_ip=node.ip, ready=False)

    def operator_pod_name(self) -> str:
        selector = ",".join(f"{k}={v}" for k, v in self.object("Deployment")["spec"]["selector"]["matchLabels"].items())
        path = f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={urllib.parse.quote(selector)}"
        pods = wait_for(lambda: self.cp.api("GET", path)["items"], 60, "the Deployment's operator pods")
        return str(pods[0]["metadata"]["name"])

    def service_account(self, component: str) -> str:
        pod_spec = self.object("Deployment" if component == "operator" else "DaemonSet")["spec"]["template"]["spec"]
        return str(pod_spec["serviceAccountName"])

    def start_operator(self) -> processes.ManagedProcess:
        deployment = self.object("Deployment")
        container = _helm.container(deployment, "operator")
        pod_name = self.operator_pod_name()
        tls_dir = self.workdir / "operator-tls"  # the chart's emptyDir (auto) or Secret volume (secrets)
        tls_dir.mkdir(parents=True, exist_ok=True)
        volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
        if "secret" in volume:
            for key, value in self.secret(volume["secret"]["secretName"]).items():
                (tls_dir / key).write_bytes(value)
        fields = {"metadata.namespace": self.namespace, "metadata.name": pod_name,
                  "spec.serviceAccountName": self.service_account("operator"),
                  "status.podIP": "127.0.0.1"}  # on the host network: this machine's (loopback) address
        chart_env = _resolve_env(container, fields, tls_dir, self.secret)
        kubeconfig = self.cp.kubeconfig_for_service_account(self.namespace, self.service_account("operator"))
        env = {
            **_clean_environ(),
            # The operator's AWS identity (IRSA or the node role in a cluster): moto accepts any key.
            # The chart's own (operator.credentialsSecret) win.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            **chart_env,
            # In a pod: the mounted token of the same ServiceAccount.
            "KUBECONFIG": str(kubeconfig),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)]),
        }
        argv = [sys.executable, "-m", "podiam_operator", *container.get("args", [])]
        process = processes.ManagedProcess(f"{self.name}-operator", argv, self.workdir / "operator.log", env=env, cwd=self.workdir)
        process.start()
        self.operator = process
        liveness = next(p["containerPort"] for p in container["ports"] if p["name"] == "liveness")
        process.wait_http(f"http://127.0.0.1:{liveness}{container['livenessProbe']['httpGet']['path']}", timeout=60)
        return process

    def secret(self, name: str) -> dict[str, bytes]:
        secret = self.cp.api("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
        return {key: base64.b64decode(value) for key, value in secret["data"].items()}

    def create_secret(self, name: str, data: Mapping[str, bytes]) -> None:
        """As ``kubectl create secret generic NAME --from-file=...`` does."""
        self.cp.api("POST", f"/api/v1/namespaces/{self.namespace}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
        })

    def proxy_secret(self) -> dict[str, bytes]:
        volume = next(v for v in self.object("DaemonSet")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
        return self.secret(volume["secret"]["secretName"])

    def start_proxies(self, timeout: float = 60.0) -> None:
        """Once the proxies' Secret exists (the kubelet waits for it too), start one proxy per node as its pod would run."""
        data = wait_for(self.proxy_secret, timeout, "the proxies' TLS Secret")
        daemonset = self.object("DaemonSet")
        container = _helm.container(daemonset, "proxy")
        for node in self.nodes:
            tls_dir = self.workdir / f"proxy-tls-{node.name}"
            tls_dir.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():  # the Secret volume
                (tls_dir / key).write_bytes(value)
            env = _resolve_env(container, {"spec.nodeName": node.name, "status.hostIP": node.ip}, tls_dir)
            env.update({
                # Network safety: no rule on this machine, never the real metadata service.
                "PODIAM_PROXY_IPTABLES": "false",
                "PODIAM_PROXY_UPSTREAM": f"http://{node.ip}:9",
            })
            process = processes.ManagedProcess(
                f"proxy-{node.name}", [sys.executable, "-m", "metadata_proxy", *container.get("args", [])],
                self.workdir / f"proxy-{node.name}.log", env={**_clean_environ(), **env, "PYTHONPATH": str(REPO)}, cwd=self.workdir,
            )
            process.start()
            node.process = process
            health = self.ports["health"]
            process.wait_http(f"http://{node.ip}:{health}{container['livenessProbe']['httpGet']['path']}", timeout=30)

    def mark_ready_proxies(self, timeout: float) -> None:
        """The kubelet's readiness probe: once /readyz answers 200, the pod's Ready condition turns True."""
        path = _helm.container(self.object("DaemonSet"), "proxy")["readinessProbe"]["httpGet"]["path"]
        for node in self.nodes:
            wait_for(lambda node=node: proxy_support.http_request(node.ip, self.ports["health"], "GET", path).status == 200,  # type: ignore[misc]
                     timeout, f"proxy on {node.name} ready (the operator's snapshot arrived)")
            kubelet.set_pod_status(self.cp, self.namespace, node.pod, pod_ip=node.ip, host_ip=node.ip, ready=True)

    # --- observation -------------------------------------------------------------------------

    def operator_log(self) -> str:
        return self.operator.log() if self.operator else ""

    def forbidden_lines(self) -> list[str]:
        return [line for line in self.operator_log().splitlines() if FORBIDDEN.search(line)]

    def taints(self, node: Node) -> list[str]:
        return [t["key"] for t in self.cp.api("GET", f"/api/v1/nodes/{node.name}")["spec"].get("taints") or []]

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        for node in self.nodes:
            if node.process is not None:
                node.process.stop()

    def uninstall(self) -> None:
        """Stop the processes; delete the namespace, the cluster-scoped objects and the nodes."""
        self.stop()
        paths = [f"/apis/{o['apiVersion']}/{_CLUSTER_SCOPED[o['kind']]}/{o['metadata']['name']}"
                 for o in self.objects if o["kind"] in _CLUSTER_SCOPED]
        paths += [f"/api/v1/nodes/{node.name}" for node in self.nodes]
        for path in paths:
            try:
                self.cp.api("DELETE", path)
            except ApiError as error:
                if error.status != 404:
                    raise
        delete_namespace(self.cp, self.namespace)


def delete_namespace(cp: ControlPlane, namespace: str, timeout: float = 60.0) -> None:
    """Delete a namespace and wait until it is gone, doing the kubelet's final delete of its bound pods.

    Without a kubelet, a bound pod deleted with a grace period stays
    Terminating forever, and so would its namespace; later operators would
    then see its pods and be refused Events in the terminating namespace.
    The workloads go first so that nothing recreates the pods, which then
    go at once: the namespace controller finds the namespace empty.
    """
    for collection in ("/apis/apps/v1/namespaces/{}/daemonsets", "/apis/apps/v1/namespaces/{}/deployments",
                       "/apis/apps/v1/namespaces/{}/replicasets"):
        try:
            cp.api("DELETE", collection.format(namespace))
        except ApiError as error:
            if error.status != 404:
                raise

    def pods_gone() -> bool:
        pods = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
        for pod in pods:
            kubelet.delete_pod(cp, namespace, pod["metadata"]["name"], grace_period=0)
        return not pods

    wait_for(pods_gone, timeout, f"pods of namespace {namespace} deleted", interval=0.2)
    try:
        cp.api("DELETE", f"/api/v1/namespaces/{namespace}")
    except ApiError as error:
        if error.status == 404:
            return
        raise

    def gone() -> bool:
        try:
            pods_gone()
            cp.api("GET", f"/api/v1/namespaces/{namespace}")
        except ApiError as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_for(gone, timeout, f"namespace {namespace} deleted", interval=0.2)


_CLUSTER_SCOPED = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings", "ClusterKopfPeering": "clusterkopfpeerings",
                   "MutatingWebhookConfiguration": "mutatingwebhookconfigurations"}
