"""The whole podiam stack on one machine: control plane, STS, N proxies, the operator.

Used by the operator's integration tests, the fault tests, the benchmark and
the demo (a plain script can use it as a context manager). Given a running
:class:`~localcluster.controlplane.ControlPlane` and the STS front, :class:`Stack`

- installs the CRDs (PodRoleBinding and kopf's peering);
- creates N fake nodes, node i with InternalIP 127.0.0.(10+i);
- runs a real proxy process per node, bound to that address, and a proxy
  "pod" for it in ``podiam-system`` (label ``app.kubernetes.io/name=podiam-proxy``,
  bound to its node, Running, hostIP = podIP = the node's address);
- runs the operator as a real process (``python -m podiam_operator``) with
  the admin kubeconfig and ``PODIAM_*`` settings, TLS files from the test PKI;
  or, with ``tls="auto"`` (the chart's default), the operator issues the CA
  and certificates into Secrets of ``podiam-system`` and the proxies get the
  files of the ``podiam-proxy-tls`` Secret, as the DaemonSet's Secret volume
  would give them (so the operator starts first there);
- ``node_addresses`` and ``node_proxy_args`` place a node elsewhere than
  127.0.0.(10+i) and give its proxy flags of its own (e.g. ``--iptables``
  on a node whose address is the host side of a pod's veth);
- offers helpers to create annotated pods with a pod IP from 127.0.1.0/24
  and up (test clients bind that source address to reach their node's proxy,
  which tells pods apart by source IP), to wait for a binding's phase and to
  fetch credentials as a pod.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from localcluster.controlplane import ApiError, ControlPlane, kubelet
from localcluster import certs, moto, ports, processes, proxy

REPO = Path(__file__).resolve().parents[1]
CRDS = (REPO / "crds" / "podrolebindings.podiam.io.yaml", REPO / "crds" / "kopf-peering.yaml")
# The Secrets TLS auto mode creates in the operator's namespace (the CA, the proxies', the operator's, the webhook's).
AUTO_SECRETS = ("podiam-ca", "podiam-proxy-tls", "podiam-operator-tls", "podiam-webhook-tls")
PROXY_NAMESPACE = "podiam-system"
PROXY_LABELS = {"app.kubernetes.io/name": "podiam-proxy"}
TAINT = "podiam.io/agent-not-ready"
# The chart runs the operator as this ServiceAccount in the release namespace (PROXY_NAMESPACE here).
OPERATOR_SERVICE_ACCOUNT = "podiam-operator"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
# The operator's TLS defaults in auto mode (podiam_operator.tls settings).
PROXY_TLS_SECRET = "podiam-proxy-tls"
PROXY_TLS_KEYS = ("tls.crt", "tls.key", "ca.crt")
T = TypeVar("T")
_POD_IPS = itertools.count()


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, what: str = "condition", interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as error:  # transient (e.g. not created yet)
            last = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s (last: {last!r})")
        time.sleep(interval)


@dataclasses.dataclass
class Node:
    index: int
    name: str
    ip: str
    proxy: proxy.ProxyProcess


class Stack:
    def __init__(
        self,
        cp: ControlPlane,
        sts: moto.StsFront,
        workdir: Path,
        *,
        nodes: int = 2,
        taint_nodes: bool = True,
        operator_env: Mapping[str, str] | None = None,
        operator_args: Sequence[str] = (),
        proxy_args: Sequence[str] = (),
        anti_entropy: float = 2.0,
        tls: Literal["test-pki", "auto"] = "test-pki",
        node_addresses: Sequence[str] | None = None,
        node_proxy_args: Mapping[int, Sequence[str]] | None = None,
    ) -> None:
        self.cp = cp
        self.sts = sts
        self.workdir = workdir
        self.node_count = nodes
        self.taint_nodes = taint_nodes
        self.operator_env = dict(operator_env or {})
        self.operator_args = list(operator_args)
        self.proxy_args = list(proxy_args)
        self.anti_entropy = anti_entropy
        self.tls = tls
        self.node_proxy_args = {i: list(a) for i, a in (node_proxy_args or {}).items()}
        self.nodes: list[Node] = []
        self.operators: list[processes.ManagedProcess] = []
        self._operator_count = 0
        self.pki: certs.Pki | None = None
        self.server_files: proxy.ServerFiles | None = None
        self.addresses = list(node_addresses) if node_addresses else [f"127.0.0.{10 + i}" for i in range(nodes)]
        if len(self.addresses) != nodes:
            raise ValueError(f"{nodes} nodes but {len(self.addresses)} node addresses")
        hosts = self.addresses or ["127.0.0.1"]  # nodes=0: the caller brings its own (bench.scale)
        self.metadata_port = ports.free_port_on_all(hosts)
        self.control_port = ports.free_port_on_all(hosts)
        self.health_port = ports.free_port_on_all(hosts)

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, operator: bool = True) -> Stack:
        self.cp.install_crds(*CRDS)
        self._ensure_namespace(PROXY_NAMESPACE, None)
        if self.tls == "auto":
            if not operator:
                raise ValueError("tls='auto': the operator issues the proxies' certificate, so it must start first")
            self.start_operator()
            self.server_files = self.mount_proxy_secret()
        else:
            self.pki = certs.make_pki(self.workdir / "pki")
            self.server_files = proxy.ServerFiles.of(self.pki)
        for i in range(self.node_count):
            self.add_node(i)
        if operator:
            if self.tls != "auto":
                self.start_operator()
            self.wait_proxies_ready()
        return self

    def mount_proxy_secret(self, timeout: float = 60.0) -> proxy.ServerFiles:
        """Write the operator's ``podiam-proxy-tls`` Secret to files, as the proxy DaemonSet's Secret volume does.

        Waits for the operator to create it. Written once: a renewal later
        is not followed (tests and the demo end long before one is due).
        """
        def complete() -> dict[str, str] | None:
            secret = self.cp.api("GET", f"/api/v1/namespaces/{PROXY_NAMESPACE}/secrets/{PROXY_TLS_SECRET}")
            data: dict[str, str] = secret.get("data") or {}
            return data if all(data.get(key) for key in PROXY_TLS_KEYS) else None

        data = wait_for(complete, timeout, f"Secret {PROXY_NAMESPACE}/{PROXY_TLS_SECRET} from the operator")
        directory = self.workdir / "proxy-tls"
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        for key in PROXY_TLS_KEYS:
            tmp = directory / f".{key}.tmp"
            tmp.write_bytes(base64.b64decode(data[key]))
            tmp.chmod(0o600)
            tmp.replace(directory / key)
        return proxy.ServerFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")

    def stop(self) -> None:
        for process in self.operators:
            process.stop()
        for node in self.nodes:
            node.proxy.stop()
        if self.tls == "auto":  # what the operator issued: the next stack in auto mode makes its own CA
            for name in AUTO_SECRETS:
                try:
                    self.cp.api("DELETE", f"/api/v1/namespaces/{PROXY_NAMESPACE}/secrets/{name}")
                except ApiError as error:
                    if error.status != 404:
                        raise

    def add_node(self, index: int) -> Node:
        name = f"node-{index}"
        ip = self.addresses[index] if index < len(self.addresses) else f"127.0.0.{10 + index}"
        assert self.server_files is not None
        try:
            kubelet.create_node(self.cp, name, ip, taints=[f"{TAINT}:NoSchedule"] if self.taint_nodes else ())
        except ApiError as error:
            if error.status != 409:
                raise
        process = proxy.ProxyProcess(
            self.workdir, self.pki or self.server_files, ip, metadata_port=self.metadata_port, control_port=self.control_port,
            health_port=self.health_port, node_name=name, args=[*self.proxy_args, *self.node_proxy_args.get(index, ())],
            name=f"proxy-{name}",
        ).start()
        node = Node(index, name, ip, process)
        self.nodes.append(node)
        self._create_proxy_pod(node)
        return node

    def create_proxy_pod(self, node: Node) -> None:
        """The node's proxy pod (again, e.g. after a test deleted it), Running with the node's address, not ready."""
        self._create_proxy_pod(node)

    def _create_proxy_pod(self, node: Node, restarts: int = 0) -> None:
        pod_name = f"podiam-proxy-{node.name}"
        try:
            self.cp.api("POST", f"/api/v1/namespaces/{PROXY_NAMESPACE}/pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": PROXY_NAMESPACE, "labels": dict(PROXY_LABELS)},
                "spec": {"hostNetwork": True, "containers": [{"name": "proxy", "image": "podiam-proxy"}],
                         "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}]},
            })
            kubelet.bind_pod(self.cp, PROXY_NAMESPACE, pod_name, node.name)
        except ApiError as error:
            if error.status != 409:
                raise
        kubelet.set_pod_status(self.cp, PROXY_NAMESPACE, pod_name, pod_ip=node.ip, host_ip=node.ip, ready=False)

    def operator_environment(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PODIAM_", "AWS_", "KUBERNETES_"))}
        if self.tls == "auto":
            # The operator writes its client certificate, key and CA bundle here (start_operator: one folder each).
            files = self.workdir / "operator-tls"
            tls = {"PODIAM_TLS_MODE": "auto", "PODIAM_TLS_CLIENT_CERT_FILE": str(files / "tls.crt"),
                   "PODIAM_TLS_CLIENT_KEY_FILE": str(files / "tls.key"), "PODIAM_TLS_CA_FILE": str(files / "ca.crt")}
        else:
            assert self.pki is not None
            tls = {"PODIAM_TLS_MODE": "secrets", "PODIAM_TLS_CLIENT_CERT_FILE": str(self.pki.operator.cert),
                   "PODIAM_TLS_CLIENT_KEY_FILE": str(self.pki.operator.key), "PODIAM_TLS_CA_FILE": str(self.pki.ca)}
        return {
            **base,
            "KUBECONFIG": str(self.cp.kubeconfig),
            # moto accepts any key; nothing may ever reach a real IMDS or AWS.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "PODIAM_STS_ENDPOINT_URL": self.sts.url,
            "PODIAM_STS_REGION": "us-east-1",
            **tls,
            "PODIAM_TLS_NAMESPACE": PROXY_NAMESPACE,
            "PODIAM_TLS_CHECK_PROXY_SECRET": "false",
            "PODIAM_PROXY_CONTROL_PORT": str(self.control_port),
            "PODIAM_ANTI_ENTROPY_INTERVAL": str(self.anti_entropy),
            "PODIAM_STS_RETRY_BASE": "0.05",
            "PODIAM_LOG_FORMAT": "plain",
            "PODIAM_PEERING_LIFETIME": "6",
            # Loopback only: a port free on 127.0.0.1 may be taken on another 127.0.0.x.
            "PODIAM_METRICS_ADDRESS": "127.0.0.1",
            "PODIAM_LIVENESS_ADDRESS": "127.0.0.1",
            **self.operator_env,
        }

    def start_operator(self, *, env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                       wait: bool = True) -> processes.ManagedProcess:
        """Start one more operator; ``wait``: until kopf's /healthz answers (after its start-up handlers)."""
        self._operator_count += 1
        metrics_port, liveness_port = ports.free_port(), ports.free_port()
        environment = {**self.operator_environment(), "PODIAM_METRICS_PORT": str(metrics_port),
                       "PODIAM_LIVENESS_PORT": str(liveness_port), "POD_ID": f"operator-{self._operator_count}"}
        if self.tls == "auto":
            files = self.workdir / f"operator-{self._operator_count}-tls"
            environment |= {"PODIAM_TLS_CLIENT_CERT_FILE": str(files / "tls.crt"),
                            "PODIAM_TLS_CLIENT_KEY_FILE": str(files / "tls.key"), "PODIAM_TLS_CA_FILE": str(files / "ca.crt")}
        environment |= dict(env or {})
        process = processes.ManagedProcess(
            f"operator-{self._operator_count}",
            [sys.executable, "-m", "podiam_operator", *self.operator_args, *args],
            self.workdir / f"operator-{self._operator_count}.log",
            env=environment,
            cwd=REPO,
        )
        process.env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO)])
        process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
        process.liveness_url = f"http://127.0.0.1:{liveness_port}/healthz"  # type: ignore[attr-defined]
        process.start()
        self.operators.append(process)
        if wait:
            process.wait_http(process.liveness_url, timeout=60)  # type: ignore[attr-defined]
        return process

    def print_operator_logs(self) -> None:
        """Every operator's log tail, for a fixture whose set-up failed (pytest shows what it printed)."""
        for process in self.operators:
            print(f"--- {process.name} log ---\n{process.log()[-6000:]}")

    @property
    def operator(self) -> processes.ManagedProcess:
        live = [p for p in self.operators if p.alive()]
        assert live, "no operator is running"
        return live[-1]

    def operator_metrics(self, process: processes.ManagedProcess | None = None) -> str:
        url = (process or self.operator).metrics_url  # type: ignore[attr-defined]
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def wait_proxies_ready(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            wait_for(lambda node=node: node.proxy.health("/readyz").status == 200, timeout, f"proxy on {node.name} ready")  # type: ignore[misc]

    def restart_proxy(self, node: Node) -> None:
        """The proxy process restarts (its pod stays): it comes back empty."""
        node.proxy.stop()
        node.proxy.start()

    # --- cluster objects -------------------------------------------------------------------

    def _ensure_namespace(self, name: str, permitted: str | None) -> None:
        annotations = {} if permitted is None else {"iam.amazonaws.com/permitted": permitted}
        try:
            self.cp.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": name, "annotations": annotations}})
        except ApiError as error:
            if error.status != 409:
                raise
            self.set_permitted(name, permitted)

    def create_namespace(self, name: str, permitted: str | None = ".*") -> None:
        self._ensure_namespace(name, permitted)

    def set_permitted(self, namespace: str, permitted: str | None) -> None:
        self.cp.api("PATCH", f"/api/v1/namespaces/{namespace}",
                    {"metadata": {"annotations": {"iam.amazonaws.com/permitted": permitted}}})

    def next_ip(self) -> str:
        """A pod IP never handed out before in this process: stacks share one control
        plane per test session, and pods of earlier stacks stay in it."""
        n = next(_POD_IPS)
        return f"127.0.{1 + n // 250}.{1 + n % 250}"

    def pod_manifest(self, namespace: str, name: str, *, role: str | None = None,
                     labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
                     host_network: bool = False) -> dict[str, Any]:
        all_annotations = dict(annotations or {})
        if role is not None:
            all_annotations["iam.amazonaws.com/role"] = role
        spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app"}]}
        if host_network:
            spec["hostNetwork"] = True
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {}), "annotations": all_annotations},
                "spec": spec}

    def create_pod(self, namespace: str, name: str, *, role: str | None = None, node: Node | None = None,
                   ip: str | None = None, labels: Mapping[str, str] | None = None,
                   annotations: Mapping[str, str] | None = None, host_network: bool = False) -> dict[str, Any]:
        """Create a pod; with ``node`` bind it there; with ``ip`` (or "auto") report it Running with that IP."""
        created: dict[str, Any] = self.cp.api("POST", f"/api/v1/namespaces/{namespace}/pods",
                                              self.pod_manifest(namespace, name, role=role, labels=labels,
                                                                annotations=annotations, host_network=host_network))
        if node is not None:
            kubelet.bind_pod(self.cp, namespace, name, node.name)
            if ip is not None:
                created = self.set_ip(namespace, name, node.ip if host_network else (self.next_ip() if ip == "auto" else ip))
        return created

    def set_ip(self, namespace: str, name: str, ip: str) -> dict[str, Any]:
        return kubelet.set_pod_status(self.cp, namespace, name, pod_ip=ip)

    def finish_pod(self, namespace: str, name: str, phase: str = "Succeeded") -> None:
        current = self.cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        kubelet.set_pod_status(self.cp, namespace, name, phase=phase, pod_ip=current["status"].get("podIP"))

    def delete_pod(self, namespace: str, name: str, grace_period: int = 0) -> None:
        kubelet.delete_pod(self.cp, namespace, name, grace_period=grace_period)

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        self.cp.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", {"metadata": {"annotations": dict(annotations)}})

    def apply_binding(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "podiam.io/v1alpha1", "kind": "PodRoleBinding",
                "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
        result: dict[str, Any] = self.cp.api("POST", f"/apis/podiam.io/v1alpha1/namespaces/{namespace}/podrolebindings", body)
        return result

    def delete_binding(self, namespace: str, name: str) -> None:
        self.cp.api("DELETE", f"/apis/podiam.io/v1alpha1/namespaces/{namespace}/podrolebindings/{name}")

    def binding(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.cp.api("GET", f"/apis/podiam.io/v1alpha1/namespaces/{namespace}/podrolebindings/{name}")
            return result
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def wait_binding_phase(self, namespace: str, name: str, phase: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            binding = self.binding(namespace, name)
            return binding if binding and binding.get("status", {}).get("phase") == phase else None

        try:
            return wait_for(check, timeout, f"binding {namespace}/{name} phase {phase}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; binding is {json.dumps(self.binding(namespace, name))}") from None

    def events(self, namespace: str, *, kind: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cp.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
        return [e for e in items if (kind is None or e["involvedObject"]["kind"] == kind)
                and (name is None or e["involvedObject"]["name"] == name)]

    def wait_event(self, namespace: str, kind: str, name: str, reason: str, timeout: float = 30.0) -> dict[str, Any]:
        return wait_for(lambda: next((e for e in self.events(namespace, kind=kind, name=name) if e["reason"] == reason), None),
                        timeout, f"Event {reason} on {kind} {namespace}/{name}")

    # --- a pod's view -------------------------------------------------------------------------

    def imds(self, node: Node, pod_ip: str, path: str = CREDENTIALS_PATH) -> proxy.HttpResult:
        return node.proxy.imds_get(path, source_ip=pod_ip)

    def credentials(self, node: Node, pod_ip: str) -> dict[str, Any] | None:
        """What an SDK would read as the pod: the role's credential document, or None (no role)."""
        listing = self.imds(node, pod_ip)
        if listing.status != 200:
            return None
        role = listing.text.strip().splitlines()[0]
        document = self.imds(node, pod_ip, CREDENTIALS_PATH + role)
        if document.status != 200:
            return None
        result: dict[str, Any] = json.loads(document.body)
        result["RoleName"] = role
        return result

    def wait_credentials(self, node: Node, pod_ip: str, timeout: float = 30.0) -> dict[str, Any]:
        return wait_for(lambda: self.credentials(node, pod_ip), timeout, f"credentials for {pod_ip} on {node.name}")

    def wait_no_credentials(self, node: Node, pod_ip: str, timeout: float = 30.0) -> None:
        wait_for(lambda: self.imds(node, pod_ip).status == 404, timeout, f"no credentials for {pod_ip} on {node.name}")

    # --- the operator's own pods -------------------------------------------------------------

    def create_operator_pod(self, node: Node, name: str, ip: str = "127.0.0.1") -> dict[str, Any]:
        """One of the operator's own pods as the chart runs them (its namespace, its ServiceAccount), Running on ``node``.

        ``ip`` is where the operator process's requests to its node's proxy come
        from: 127.0.0.1 for a process on loopback (see :meth:`node_identity_env`).
        """
        try:
            self.cp.api("POST", f"/api/v1/namespaces/{PROXY_NAMESPACE}/serviceaccounts",
                        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SERVICE_ACCOUNT}})
        except ApiError as error:
            if error.status != 409:
                raise
        manifest = self.pod_manifest(PROXY_NAMESPACE, name, labels={"app.kubernetes.io/name": "podiam-operator"})
        manifest["spec"]["serviceAccountName"] = OPERATOR_SERVICE_ACCOUNT
        self.cp.api("POST", f"/api/v1/namespaces/{PROXY_NAMESPACE}/pods", manifest)
        kubelet.bind_pod(self.cp, PROXY_NAMESPACE, name, node.name)
        return self.set_ip(PROXY_NAMESPACE, name, ip)

    def node_identity_env(self, node: Node) -> dict[str, str]:
        """An operator with no keys of its own that reads its AWS identity from ``node``'s proxy, as a pod would at
        169.254.169.254, and pushes node-identity entries for its own pods (the chart's default)."""
        return {
            "PODIAM_OPERATOR_NODE_IDENTITY": "true",
            "PODIAM_OPERATOR_NAMESPACE": PROXY_NAMESPACE,
            "PODIAM_OPERATOR_SERVICE_ACCOUNT": OPERATOR_SERVICE_ACCOUNT,
            "AWS_ACCESS_KEY_ID": "",  # empty: botocore's environment provider finds nothing
            "AWS_SECRET_ACCESS_KEY": "",
            "AWS_EC2_METADATA_DISABLED": "false",
            # The node's proxy instead of 169.254.169.254: nothing in a test reaches a real metadata service.
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": node.proxy.metadata_url + "/",
        }

    def node_taints(self, node: Node) -> list[str]:
        body = self.cp.api("GET", f"/api/v1/nodes/{node.name}")
        return [t["key"] for t in body.get("spec", {}).get("taints") or []]


def caller_identity(sts_url: str, credentials: Mapping[str, Any]) -> dict[str, Any]:
    """``aws sts get-caller-identity`` (the real AWS CLI) with a pod's credentials, nothing else in its environment."""
    env = {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["Token"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "aws"), "sts", "get-caller-identity", "--endpoint-url", sts_url, "--output", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    identity: dict[str, Any] = json.loads(result.stdout)
    return identity


def source_address_works(ip: str) -> bool:
    """Whether this host can bind ``ip`` as a source address (any 127.0.0.0/8 address on Linux)."""
    with socket.socket() as sock:
        try:
            sock.bind((ip, 0))
        except OSError:
            return False
    return True
