"""One real Kubernetes node: containerd, runc, the CNI bridge and a kubelet in a network namespace of its own.

Everything a node writes goes under its folder (``DIR``): containerd's root
and state, the kubelet's root dir, pod logs, CNI configuration and IPAM
state, certificates. What the components write elsewhere no matter their
configuration is recorded and removed by :func:`clean_up` (which works from
the recorded :class:`NodeRecord` alone, so a later session can clean up after
one that was killed):

- processes: containerd and the kubelet die with the test runner
  (PR_SET_PDEATHSIG); container processes and containerd's shims do not, so
  every process in the node's cgroups is killed, and every shim whose command
  line names this node's containerd socket;
- mounts under ``DIR`` (container root filesystems, pod network namespaces,
  volumes): unmounted;
- cgroups: the kubelet's ``cgroupRoot`` is ``/podiam-TAG-NODE`` in every
  hierarchy, removed bottom-up;
- ``/run/containerd/s/`` (shim sockets: the path is fixed in containerd 1.6),
  ``/var/lib/cni/results`` (libcni's cache, fixed), ``/var/log/containers``
  (the kubelet's legacy log links, fixed) and ``/var/lib/kubelet/device-plugins``
  (the device manager's socket, fixed): this node's entries, and the folders
  themselves if the cluster created them;
- the network namespace (its veth goes with it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from localcluster import certs, processes
from localcluster.controlplane import image_root, network

_REPOSITORY = Path(__file__).resolve().parents[2]
CNI_BIN_DIR = Path("/usr/lib/cni")
SHIM_SOCKETS = Path("/run/containerd/s")
CNI_CACHE = Path("/var/lib/cni")
LEGACY_CONTAINER_LOGS = Path("/var/log/containers")
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
# Folders outside the cluster's own that a node's components create when missing.
HOST_FOLDERS = (SHIM_SOCKETS.parent, CNI_CACHE, LEGACY_CONTAINER_LOGS, DEVICE_PLUGINS.parent)
KUBELET_PORT = 10250
STARTUP_TAINT = "podiam.io/agent-not-ready"


class NodeError(RuntimeError):
    pass


@dataclasses.dataclass
class NodeRecord:
    """What identifies a node's leftovers, kept in the cluster's state file."""

    name: str
    index: int
    dir: str
    netns: str
    ip: str
    pod_subnet: str
    cgroup_root: str
    cni_network: str
    processes: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def socket(self) -> Path:
        return Path(self.dir) / "containerd.sock"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeRecord:
        return cls(**data)


def _containerd_config(record: NodeRecord, pause_image: str) -> str:
    base = Path(record.dir) / "containerd"
    return f'''version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
# Plugins this node does not need, and "opt", which would create /opt/containerd.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{record.socket}"
[ttrpc]
  address = "{record.socket}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF" (runc cannot lower oom_score_adj).
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Pod network namespaces are mounted under the state folder, not /var/run/netns.
  netns_mounts_under_state_dir = true
  # exec/attach/port-forward streams: on the node's loopback, proxied by the kubelet.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{base / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{Path(record.dir) / 'cni' / 'net.d'}"
'''


def _cni_config(record: NodeRecord) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": record.cni_network,
        "plugins": [{
            "type": "bridge",
            "bridge": network.POD_BRIDGE,
            # The pods' gateway is the node: this turns forwarding on in the node's namespace only.
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": record.pod_subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(Path(record.dir) / "cni" / "ipam"),
            },
        }],
    }


def _kubelet_config(record: NodeRecord, ca_file: Path, serving: certs.CertFiles,
                    taints: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    base = Path(record.dir)
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": record.ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        # The API server authenticates with its kubelet client certificate (logs, exec).
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca_file)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{record.socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": record.cgroup_root,
        # This machine mounts cgroup v1 (with v2 beside it); 1.35+ refuses v1 unless told.
        "failCgroupV1": False,
        "failSwapOn": False,
        # The kubelet's own iptables chains are kube-proxy's business; none runs here.
        "makeIPTablesUtilChains": False,
        # The build patches the kubelet to only warn about these (localcluster/controlplane/build.py PATCHES).
        "protectKernelDefaults": False,
        "podLogsDir": str(base / "pod-logs"),
        "volumePluginDir": str(base / "volume-plugins"),
        "resolvConf": str(base / "resolv.conf"),
        "registerWithTaints": list(taints),
        # A busy shared disk must not make the node evict pods or delete the images loaded into it.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "4s",
        "shutdownGracePeriod": "0s",
    }


def _kubeconfig(server: str, ca_file: Path, pair: certs.CertFiles, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---- cgroups --------------------------------------------------------------

def _cgroup_mounts() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and the unified v2 one)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            mounts.append(Path(left.split()[4]))
    return mounts


def _create_cgroup_root(root: str) -> None:
    """The kubelet requires its cgroupRoot to exist; cpuset needs CPUs and memory nodes before any task joins."""
    for mount in _cgroup_mounts():
        path = mount / root.lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (path / name).exists() and not (path / name).read_text().strip():
                (path / name).write_text((mount / name).read_text())


def _kill_cgroup_tasks(root: str, timeout: float = 10.0) -> None:
    """SIGKILL every process left in the node's cgroups (containers outlive the kubelet)."""
    deadline = time.monotonic() + timeout
    while True:
        pids: set[int] = set()
        for mount in _cgroup_mounts():
            top = mount / root.lstrip("/")
            if top.is_dir():
                for procs in top.rglob("cgroup.procs"):
                    pids.update(int(p) for p in procs.read_text().split())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise NodeError(f"processes {sorted(pids)} in cgroup {root} survive SIGKILL")
        time.sleep(0.1)


def _remove_cgroup_root(root: str) -> None:
    for mount in _cgroup_mounts():
        top = mount / root.lstrip("/")
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            directory.rmdir()
        top.rmdir()


# ---- mounts, shims and host folders -----------------------------------------

def _mounts_under(folder: Path) -> list[Path]:
    prefix = str(folder.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return found


def _unmount_all(folder: Path) -> None:
    for _ in range(5):  # stacked mounts: the same point may show up again after one unmount
        points = _mounts_under(folder)
        if not points:
            return
        for point in sorted(points, key=lambda p: len(p.parts), reverse=True):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    left = _mounts_under(folder)
    if left:
        raise NodeError(f"mounts left under {folder}: {left}")


def _shim_pids(socket_path: Path) -> list[int]:
    """containerd-shim processes started by this node's containerd (they name its socket)."""
    pids = []
    needle = str(socket_path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and needle in cmdline:
            pids.append(int(entry.name))
    return pids


def _shim_socket_files(state: Path) -> list[Path]:
    """The sockets this node's shims listen on (each task folder's ``address`` file names one)."""
    sockets = []
    for address in state.glob("io.containerd.runtime.v2.task/*/*/address"):
        value = address.read_text().strip()
        if value.startswith("unix://"):
            sockets.append(Path(value[len("unix://"):]))
    return sockets


def sandbox_ids(record: NodeRecord) -> set[str]:
    """The pod sandboxes this node's containerd knows (live or left by a killed run)."""
    base = Path(record.dir) / "containerd"
    return {path.name for part in ("root", "state") for path in base.glob(f"{part}/io.containerd.grpc.v1.cri/sandboxes/*")}


def cni_cache_entries(record: NodeRecord) -> list[Path]:
    """libcni's cached results of this node's sandboxes: its own network's and containerd's loopback's."""
    results = CNI_CACHE / "results"
    if not results.is_dir():
        return []
    ids = sandbox_ids(record)
    return [entry for entry in results.iterdir()
            if entry.name.startswith(f"{record.cni_network}-") or any(f"-{sandbox}-" in entry.name for sandbox in ids)]


def _remove_host_entries(record: NodeRecord) -> None:
    """This node's entries in the folders its components write to whatever their configuration."""
    for entry in cni_cache_entries(record):
        entry.unlink(missing_ok=True)
    if LEGACY_CONTAINER_LOGS.is_dir():
        for link in LEGACY_CONTAINER_LOGS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(record.dir + "/"):
                link.unlink()


def host_folders_missing() -> list[str]:
    """Which of :data:`HOST_FOLDERS` do not exist now (the cluster removes those it caused)."""
    return [str(folder) for folder in HOST_FOLDERS if not folder.exists()]


def remove_created_host_folders(created: Iterable[str]) -> None:
    """Remove the host folders the cluster's nodes created, once nothing of theirs is left in them."""
    for folder in sorted(created, key=lambda f: len(Path(f).parts), reverse=True):
        path = Path(folder)
        if path == DEVICE_PLUGINS.parent:
            # The device manager's socket and checkpoint: the kubelets' only use of it.
            shutil.rmtree(DEVICE_PLUGINS, ignore_errors=True)
        if path == CNI_CACHE:
            _rmdir_if_empty(path / "results")
        if path == SHIM_SOCKETS.parent:
            _rmdir_if_empty(SHIM_SOCKETS)
        _rmdir_if_empty(path)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def clean_up(record: NodeRecord) -> None:
    """Remove everything the node left (processes, mounts, cgroups, host entries, namespace); idempotent."""
    for data in record.processes:  # the kubelet first: it would restart what is killed below
        processes.stop_record(processes.Record.from_json(data), timeout=5)
    _kill_cgroup_tasks(record.cgroup_root)
    state = Path(record.dir) / "containerd" / "state"
    shim_sockets = _shim_socket_files(state) if state.is_dir() else []
    for pid in _shim_pids(record.socket):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for path in shim_sockets:
        path.unlink(missing_ok=True)
    _unmount_all(Path(record.dir))
    _remove_cgroup_root(record.cgroup_root)
    _remove_host_entries(record)
    network.delete_netns(record.netns)


# ---- a running node ---------------------------------------------------------

class Node:
    """A node's processes; :meth:`start` returns once containerd runs and its images are loaded."""

    def __init__(self, record: NodeRecord, *, detached: bool) -> None:
        self.record = record
        self.detached = detached
        self.dir = Path(record.dir)
        self._procs: dict[str, processes.ManagedProcess] = {}

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def ip(self) -> str:
        return self.record.ip

    @property
    def netns(self) -> str:
        return self.record.netns

    def _launch(self, name: str, argv: Sequence[str], *, in_netns: bool) -> processes.ManagedProcess:
        prefix = ["nsenter", f"--net={network.NETNS_DIR / self.netns}"] if in_netns else []
        self.dir.mkdir(parents=True, exist_ok=True)
        # From the repository root, so `python -m localcluster.controlplane.relay` finds its package.
        process = processes.ManagedProcess(name, [*prefix, *argv], self.dir / f"{name}.log", cwd=_REPOSITORY,
                                           detached=self.detached).start()
        self._procs[name] = process
        assert process.record is not None
        # The kubelet first in the record: clean_up stops in this order.
        self.record.processes = [p.record.to_json() for p in sorted(
            self._procs.values(), key=lambda p: p.name != "kubelet") if p.record is not None]
        return process

    def process(self, name: str) -> processes.ManagedProcess:
        return self._procs[name]

    def start_containerd(self, pause_image: str, root_template: Path | None = None) -> None:
        """containerd in the node's namespace; its root a hard-linked copy of ``root_template`` (image_root.py)."""
        for sub in ("containerd", "cni/net.d", "pod-logs", "volume-plugins", "kubelet", "pki"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if root_template is not None:
            image_root.copy_into(root_template, self.dir / "containerd" / "root")
        (self.dir / "containerd" / "config.toml").write_text(_containerd_config(self.record, pause_image))
        _write_json(self.dir / "cni" / "net.d" / "10-podiam.conflist", _cni_config(self.record))
        process = self._launch("containerd", ["containerd", "--config", str(self.dir / "containerd" / "config.toml")],
                               in_netns=True)
        self._wait(process, "containerd's socket", lambda: _connects(self.record.socket), timeout=30)

    def start_kubelet(self, binary: Path, ca: certs.CertificateAuthority, server: str,
                      taints: Sequence[Mapping[str, str]], labels: Mapping[str, str]) -> None:
        pki = self.dir / "pki"
        identity = f"system:node:{self.name}"
        serving = ca.issue("kubelet-serving", identity, server_names=(self.ip, self.name), directory=pki)
        client = ca.issue("kubelet-client", identity, organizations=("system:nodes",), client=True, directory=pki)
        _write_json(self.dir / "kubelet.kubeconfig", _kubeconfig(server, ca.cert_path, client, f"system:node:{self.name}"))
        _write_json(self.dir / "kubelet-config.json", _kubelet_config(self.record, ca.cert_path, serving, taints))
        (self.dir / "resolv.conf").write_text("# no cluster DNS and no way off this machine\n")
        _create_cgroup_root(self.record.cgroup_root)
        label_flag = ",".join(f"{k}={v}" for k, v in labels.items())
        self._launch("kubelet", [
            str(binary.parent / "kubelet"),
            f"--config={self.dir / 'kubelet-config.json'}",
            f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={pki}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ip}",
            *([f"--node-labels={label_flag}"] if label_flag else []),
        ], in_netns=True)

    def start_relay(self, name: str, ports: Iterable[int]) -> None:
        """Relays from this node's HOST_SERVICES_ADDRESS to the same ports on the root namespace's loopback."""
        self._launch(name, [sys.executable, "-m", "localcluster.controlplane.relay", f"--netns={network.NETNS_DIR / self.netns}",
                            f"--listen={network.HOST_SERVICES_ADDRESS}", *map(str, ports)], in_netns=False)

    def start_metadata_service(self, role_arn: str, sts_endpoint: str, region: str) -> None:
        self._launch("node-metadata", [
            sys.executable, "-m", "localcluster.controlplane.node_metadata",
            f"--netns={network.NETNS_DIR / self.netns}", f"--node-name={self.name}", f"--node-ip={self.ip}",
            f"--role-arn={role_arn}", f"--sts-endpoint={sts_endpoint}", f"--region={region}",
            f"--record={self.metadata_record}",
        ], in_netns=False)

    @property
    def metadata_record(self) -> Path:
        """The node metadata service's request log: one JSON object a line."""
        return self.dir / "node-metadata.jsonl"

    def metadata_requests(self) -> list[dict[str, Any]]:
        try:
            text = self.metadata_record.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def check_alive(self) -> None:
        for process in self._procs.values():
            if not process.alive():
                raise NodeError(f"{self.name}: {process.name} exited with {process.returncode()}; "
                                f"{process.log_path}:\n{process.log_tail()}")

    def _wait(self, process: processes.ManagedProcess, what: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if not process.alive():
                raise NodeError(f"{self.name}: {process.name} exited with {process.returncode()} before {what}; "
                                f"{process.log_path}:\n{process.log_tail()}")
            if time.monotonic() > deadline:
                raise NodeError(f"{self.name}: no {what} after {timeout}s; {process.log_path}:\n{process.log_tail()}")
            time.sleep(0.05)

    def ctr(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """containerd's own client against this node's containerd, in the kubelet's namespace (k8s.io)."""
        return network.run("ctr", "--address", str(self.record.socket), "--namespace", "k8s.io", *argv, check=check)

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command in the node's network namespace (as a host-network process on the node)."""
        return network.in_netns(self.netns, *argv, check=check)

    def stop(self) -> None:
        clean_up(self.record)
        self._procs.clear()


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise NodeError(f"node name {name!r}: lower-case letters, digits and '-', at most 32 characters")
    return name
