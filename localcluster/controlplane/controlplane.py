"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and
kube-controller-manager, as envtest runs them, plus the controllers a test
cluster needs (garbage collection, namespace deletion, ServiceAccounts).

No scheduler and no kubelet: ``localcluster.controlplane.kubelet`` plays their parts.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from localcluster import certs, processes
from localcluster.controlplane import build, client, network

# Controllers a test cluster needs. Deliberately absent: node-lifecycle (it
# would taint the kubelet-less Nodes unreachable after 40 s) and pod-garbage-
# collector (it deletes pods bound to nodes it thinks are gone).
DEFAULT_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
)
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
STATE_FILE = "controlplane.json"
_STOP_ORDER = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")

T = TypeVar("T")

_live: set[ControlPlane] = set()
_live_lock = threading.Lock()


class ControlPlaneError(RuntimeError):
    pass


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}:\n{stderr.strip() or stdout.strip()}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def wait_until(check: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (returned); exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # the thing waited for may not exist yet
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error is not None else ""
            raise TimeoutError(f"{what} not reached within {timeout}s{detail}")
        time.sleep(interval)


def _free_port() -> int:
    from localcluster import ports

    return ports.free_port("127.0.0.1")


class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager in ``dir``.

    ``ControlPlane.start(dir)`` starts all three and returns once the API
    server is ready and the controller manager has made the ``default``
    ServiceAccount. ``stop()`` (or leaving the ``with`` block) stops them.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.pki = self.dir / "pki"
        self.kubeconfig = self.dir / "kubeconfig"
        self.etcd_data = self.dir / "etcd-data"
        self.ca_file = self.pki / "ca.crt"
        self.admin_cert = self.pki / "admin.crt"
        self.admin_key = self.pki / "admin.key"
        self.server = ""
        self.etcd_url = ""
        self.startup_seconds = 0.0
        self.detached = False
        self.controllers: tuple[str, ...] = DEFAULT_CONTROLLERS
        self.scheduler = False
        self.apiserver_flags: tuple[str, ...] = ()
        self._procs: dict[str, processes.ManagedProcess] = {}
        self._records: dict[str, processes.Record] = {}
        self._client: client.Client | None = None
        self._argv: dict[str, list[str]] = {}

    # ---- life cycle ----------------------------------------------------

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        detached: bool = False,
        controllers: Iterable[str] = DEFAULT_CONTROLLERS,
        scheduler: bool = False,
        apiserver_flags: Iterable[str] = (),
        timeout: float = 60.0,
    ) -> ControlPlane:
        """Start everything in ``directory`` (created if missing).

        ``detached``: the processes outlive this Python process (the CLI's
        ``up``); otherwise they die with it, even if it is killed.
        ``scheduler``: also run kube-scheduler (for real nodes; with the
        ``kubelet`` stand-ins, tests bind pods themselves).
        ``apiserver_flags``: more kube-apiserver flags.
        """
        binary = build.ensure_built()
        plane = cls(directory)
        plane.detached = detached
        plane.controllers = tuple(controllers)
        plane.scheduler = scheduler
        plane.apiserver_flags = tuple(apiserver_flags)
        plane.dir.mkdir(parents=True, exist_ok=True)
        if (plane.dir / STATE_FILE).exists() and any(r.alive() for r in _read_records(plane.dir)):
            raise ControlPlaneError(f"a control plane is already running in {plane.dir}; stop it first (down --dir)")
        began = time.monotonic()
        for attempt in range(3):
            with _live_lock:
                _live.add(plane)
            try:
                plane._prepare(binary)
                plane._start_processes()
                plane._write_state()  # now, so `down` finds them even if this process dies while waiting
                plane._wait_ready(timeout)
                break
            except ControlPlaneError as error:
                plane.stop()
                # The free ports were picked before binding them: another session may have won the race.
                if "address already in use" not in str(error) or attempt == 2:
                    raise
            except BaseException:
                plane.stop()
                raise
        plane.startup_seconds = time.monotonic() - began
        plane._write_state()
        return plane

    @classmethod
    def attach(cls, directory: Path) -> ControlPlane:
        """A handle on a control plane another process started with ``up --dir``."""
        plane = cls(directory)
        state = json.loads((plane.dir / STATE_FILE).read_text())
        plane.server = state["server"]
        plane.etcd_url = state["etcd_url"]
        plane.detached = True
        plane._records = {r.name: r for r in (processes.Record.from_json(d) for d in state["processes"])}
        plane._argv = {k: list(v) for k, v in state["argv"].items()}
        return plane

    def stop(self) -> None:
        """Stop the scheduler, the controller manager, the API server and etcd (in that order); idempotent."""
        for name in _STOP_ORDER:
            self._stop_one(name)
        with _live_lock:
            _live.discard(self)
        (self.dir / STATE_FILE).unlink(missing_ok=True)
        # etcd preallocates 64 MB of WAL; a stopped cluster's data is of no further use.
        shutil.rmtree(self.etcd_data, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def running(self) -> dict[str, bool]:
        return {name: record.alive() for name, record in self._records.items()}

    def pids(self) -> dict[str, int]:
        """The running components' process ids, by name."""
        return {name: record.pid for name, record in self._records.items() if record.alive()}

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (etcd and the controller manager keep running)."""
        self._stop_one("kube-apiserver")

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again on the same port against the same etcd; returns when ready."""
        self._launch("kube-apiserver")
        self._wait_apiserver(time.monotonic() + timeout)
        self._write_state()

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        self.stop_apiserver()
        self.start_apiserver(timeout)

    def rotate_service_account_key(self, timeout: float = 60.0) -> Path:
        """Sign service-account tokens with a new key from now on, as a key rotation does; returns the new private key.

        The previous public keys stay verification keys (``--service-account-key-file`` repeated), so tokens already
        issued stay valid and the JWKS lists old and new. Restarts the API server (for podiam's container-credentials
        tests: the operator must follow the rotation to the proxies).
        """
        argv = self._argv["kube-apiserver"]
        rotated = sum(1 for arg in argv if arg.startswith("--service-account-key-file="))
        directory = self.pki / f"sa-rotated-{rotated}"
        directory.mkdir(parents=True, exist_ok=True)
        sa = certs.service_account_keys(directory)
        signing = next(i for i, arg in enumerate(argv) if arg.startswith("--service-account-signing-key-file="))
        argv[signing:signing + 1] = [f"--service-account-key-file={sa.cert}", f"--service-account-signing-key-file={sa.key}"]
        self.restart_apiserver(timeout)
        return sa.key

    def restart_controller_manager(self, timeout: float = 60.0) -> None:
        """Stop and start kube-controller-manager; returns once its controllers run again."""
        self._stop_one("kube-controller-manager")
        self._launch("kube-controller-manager")
        # Proof that its controllers run again: a new namespace gets its default ServiceAccount.
        probe = f"podiam-probe-{uuid.uuid4().hex[:8]}"
        self.api("POST", "/api/v1/namespaces", {"metadata": {"name": probe, "labels": {"podiam.io/harness-probe": "true"}}})
        try:
            self._poll(time.monotonic() + timeout, "kube-controller-manager running again",
                       lambda: bool(self.api("GET", f"/api/v1/namespaces/{probe}/serviceaccounts/default")))
        finally:
            self.api("DELETE", f"/api/v1/namespaces/{probe}")
        self._write_state()

    def install_crds(self, *manifests: Path, timeout: float = 60.0) -> None:
        """Apply CRD manifests, wait until they are Established, and make the garbage collector see them now.

        The garbage collector rediscovers resource types only every 30 s, so a
        dependent of a type created after it started may otherwise outlive its
        owner that long; restarting the controller manager (about a second)
        makes it watch the new types at once.
        """
        for manifest in manifests:
            out = self.kubectl("apply", "-f", str(manifest), "-o", "name")
            for name in out.split():
                if name.startswith("customresourcedefinition"):
                    self.kubectl("wait", "--for=condition=Established", name, f"--timeout={int(timeout)}s")
        self.restart_controller_manager(timeout)

    # ---- clients ---------------------------------------------------------

    def certificate_authority(self) -> certs.CertificateAuthority:
        """The cluster's CA (it signs the kubelets' certificates too)."""
        return certs.CertificateAuthority.load(self.pki)

    def api(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """A JSON request as the admin; raises ``client.ApiError`` (``.status``) on non-2xx.

        PATCH bodies are sent as merge patches unless ``content_type`` says otherwise.
        """
        if self._client is None:
            self._client = client.Client(self.server, self.ca_file, cert_file=self.admin_cert, key_file=self.admin_key)
        return self._client.request(method, path, body, **kwargs)

    def client_for_token(self, token: str) -> client.Client:
        return client.Client(self.server, self.ca_file, token=token)

    def environ(self, **extra: str) -> dict[str, str]:
        """This process's environment with ``KUBECONFIG`` pointing here, for subprocesses (the operator, helm)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), **extra}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None, timeout: float = 120.0) -> str:
        """Run the machine's kubectl against this control plane; returns stdout."""
        argv = ["kubectl", f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(list(args), result.returncode, result.stdout, result.stderr)
        return result.stdout

    def create_namespace(self, name: str, labels: dict[str, str] | None = None,
                         annotations: dict[str, str] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Create a namespace and wait for its ``default`` ServiceAccount, as pods need it to be admitted."""
        metadata: dict[str, Any] = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
        created: dict[str, Any] = self.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
        wait_until(lambda: self.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default"),
                   timeout, f"ServiceAccount {name}/default")
        return created

    def service_account_token(self, namespace: str, name: str, expiration_seconds: int = 3600,
                              audiences: list[str] | None = None) -> str:
        """A bound token for ``namespace/name`` from the TokenRequest API."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = audiences
        answer = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return str(answer["status"]["token"])

    def kubeconfig_for_service_account(self, namespace: str, name: str, expiration_seconds: int = 3600) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (which must exist), via TokenRequest."""
        token = self.service_account_token(namespace, name, expiration_seconds)
        path = self.dir / f"kubeconfig-sa-{namespace}-{name}"
        user = f"system:serviceaccount:{namespace}:{name}"
        _write_kubeconfig(path, self.server, self.ca_file, user, {"token": token}, namespace)
        return path

    # ---- internals -----------------------------------------------------

    def _prepare(self, binary: Path) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.log"):  # a reused dir: logs of this run only
            stale.unlink()
        # Every start is a fresh cluster: old data would not match the new PKI and ports.
        shutil.rmtree(self.etcd_data, ignore_errors=True)
        ca = certs.CertificateAuthority(self.pki)
        serving = ca.issue("apiserver", "kube-apiserver", server_names=(
            "127.0.0.1", "localhost", network.KUBERNETES_SERVICE_IP, "kubernetes", "kubernetes.default",
            "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
            network.HOST_SERVICES_ADDRESS,  # the nodes' relay to this API server
        ))
        admin = ca.issue("admin", "admin", organizations=("system:masters",), client=True)
        kcm = ca.issue("kube-controller-manager", "system:kube-controller-manager", client=True)
        scheduler = ca.issue("kube-scheduler", "system:kube-scheduler", client=True)
        # What the API server shows kubelets for logs, exec and port-forward (kubeadm names it so).
        kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                  organizations=("system:masters",), client=True)
        sa = certs.service_account_keys(self.pki)

        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        self.server = f"https://127.0.0.1:{api_port}"
        _write_kubeconfig(self.kubeconfig, self.server, self.ca_file, "admin",
                          {"client-certificate-data": _b64(admin.cert), "client-key-data": _b64(admin.key)})
        kcm_kubeconfig = self.pki / "kube-controller-manager.kubeconfig"
        _write_kubeconfig(kcm_kubeconfig, self.server, self.ca_file, "system:kube-controller-manager",
                          {"client-certificate-data": _b64(kcm.cert), "client-key-data": _b64(kcm.key)})
        scheduler_kubeconfig = self.pki / "kube-scheduler.kubeconfig"
        _write_kubeconfig(scheduler_kubeconfig, self.server, self.ca_file, "system:kube-scheduler",
                          {"client-certificate-data": _b64(scheduler.cert), "client-key-data": _b64(scheduler.key)})

        tool = binary.parent
        peer = f"http://127.0.0.1:{peer_port}"
        self._argv = {
            "etcd": [
                str(tool / "etcd"), "--name=podiam", f"--data-dir={self.etcd_data}",
                f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=podiam={peer}", "--initial-cluster-state=new",
                # A test cluster's data is thrown away: fsync buys nothing and costs seconds.
                "--unsafe-no-fsync", "--log-level=warn",
                # A lone member elects itself after one election timeout: 0.2 s, not 1 s.
                "--heartbeat-interval=20", "--election-timeout=200",
            ],
            "kube-apiserver": [
                str(tool / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert_path}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa.cert}", f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # On loopback the endpoint reconciler would publish 127.0.0.1 as the
                # kubernetes Service's endpoint, which validation rejects.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                # Real kubelets (localcluster/controlplane/node.py): dialled at their InternalIP, both ends verified.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={ca.cert_path}",
                f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
                f"--cert-dir={self.pki}",
                "--profiling=false",
                # Otherwise a stop waits for open watches up to --request-timeout
                # (60 s); with this, new requests get 429 + Retry-After while in-flight
                # ones drain, then HTTP shutdown gets 2 s.
                "--shutdown-send-retry-after=true",
                *self.apiserver_flags,
            ],
            "kube-controller-manager": [
                str(tool / "kube-controller-manager"),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--controllers={','.join(self.controllers)}",
                f"--root-ca-file={ca.cert_path}",
                f"--service-account-private-key-file={sa.key}",
                # Each controller acts as its own ServiceAccount under RBAC, as in
                # kubeadm clusters (the controller manager's own role cannot delete).
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--secure-port=0",  # nothing to serve; and no port clash between sessions
            ],
            "kube-scheduler": [
                str(tool / "kube-scheduler"),
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        }

    def _launch(self, name: str) -> None:
        process = processes.ManagedProcess(name, self._argv[name], self.dir / f"{name}.log", cwd=self.dir,
                                           detached=self.detached).start()
        self._procs[name] = process
        assert process.record is not None
        self._records[name] = process.record

    def _start_processes(self) -> None:
        # All at once: each retries its upstream, and the start-up overlaps.
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", *(("kube-scheduler",) if self.scheduler else ())):
            self._launch(name)

    def _stop_one(self, name: str) -> None:
        process = self._procs.pop(name, None)
        record = self._records.pop(name, None)
        if process is not None:
            process.stop()
        elif record is not None:
            processes.stop_record(record)

    def _check_alive(self) -> None:
        for name, process in self._procs.items():
            if not process.alive():
                raise ControlPlaneError(
                    f"{name} exited with {process.returncode()} during start-up; {process.log_path}:\n{process.log_tail()}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._poll(deadline, "etcd healthy", lambda: _http_ok(f"{self.etcd_url}/health"))
        self._wait_apiserver(deadline)
        self._poll(deadline, "the controller manager's default ServiceAccount",
                   lambda: bool(self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")))

    def _wait_apiserver(self, deadline: float) -> None:
        self._poll(deadline, "kube-apiserver /readyz", lambda: self.api("GET", "/readyz", timeout=2) == "ok")

    def _poll(self, deadline: float, what: str, check: Callable[[], bool]) -> None:
        while True:
            self._check_alive()
            try:
                if check():
                    return
            except Exception:  # refused, 403 before RBAC bootstraps, 404 before the SA exists
                pass
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- {p.log_path}:\n{p.log_tail(2000)}" for p in self._procs.values())
                raise ControlPlaneError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.05)

    def _write_state(self) -> None:
        state = {
            "server": self.server, "etcd_url": self.etcd_url, "kubeconfig": str(self.kubeconfig),
            "ca_file": str(self.ca_file), "admin_cert": str(self.admin_cert), "admin_key": str(self.admin_key),
            "detached": self.detached, "startup_seconds": round(self.startup_seconds, 2),
            "processes": [r.to_json() for r in self._records.values()],
            "argv": self._argv,
        }
        path = self.dir / STATE_FILE
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)


def _read_records(directory: Path) -> list[processes.Record]:
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [processes.Record.from_json(d) for d in state.get("processes", [])]


def stop_directory(directory: Path) -> list[str]:
    """Stop the processes recorded in ``directory`` (``down``); returns the names stopped."""
    records = _read_records(directory)
    order = {name: position for position, name in enumerate(_STOP_ORDER)}
    stopped = []
    for record in sorted(records, key=lambda r: order.get(r.name, len(order))):
        if record.alive():
            processes.stop_record(record)
            stopped.append(record.name)
    (directory / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(directory / "etcd-data", ignore_errors=True)
    return stopped


def stop_all() -> None:
    """Stop every control plane this process started and still owns (atexit, signal handlers)."""
    with _live_lock:
        planes = [p for p in _live if not p.detached]
    for plane in planes:
        plane.stop()


atexit.register(stop_all)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, credentials: dict[str, str],
                      namespace: str | None = None) -> None:
    context: dict[str, str] = {"cluster": "podiam-test", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "podiam-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "podiam-test", "context": context}],
        "current-context": "podiam-test",
    }
    # JSON is YAML, and every kubeconfig reader accepts it.
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def remove_tree(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


__all__ = ["ControlPlane", "ControlPlaneError", "KubectlError", "wait_until", "stop_directory", "stop_all",
           "DEFAULT_CONTROLLERS"]
