"""Stand-ins for the parts no kubelet (and no scheduler) plays here.

They write what those components would write, through the same API calls:
Node objects and their status, the pods/binding subresource (the scheduler),
pods/status (the kubelet: phase, IPs, conditions, container statuses) and the
final deletion a kubelet does once a terminating pod's containers are gone.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from localcluster.controlplane import client


class _Api(Protocol):
    def api(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any: ...


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_taint(taint: Mapping[str, str] | str) -> dict[str, str]:
    """A taint from a dict, or from kubectl's ``key=value:Effect`` / ``key:Effect`` form."""
    if not isinstance(taint, str):
        return dict(taint)
    spec, _, effect = taint.rpartition(":")
    if not spec or not effect:
        raise ValueError(f"taint {taint!r} is not key[=value]:Effect")
    key, _, value = spec.partition("=")
    result = {"key": key, "effect": effect}
    if value:
        result["value"] = value
    return result


def create_node(
    cp: _Api,
    name: str,
    internal_ip: str,
    taints: Iterable[Mapping[str, str] | str] = (),
    labels: Mapping[str, str] | None = None,
    *,
    ready: bool = True,
) -> dict[str, Any]:
    """Create a Node as a kubelet registers itself, then report it Ready with ``internal_ip``."""
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **(labels or {}),
    }
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels},
        "spec": {"taints": [parse_taint(t) for t in taints]},
    }
    cp.api("POST", "/api/v1/nodes", body)
    now = _now()
    capacity = {"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    status = {
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [{
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletNotReady",
                "message": "kubelet is posting ready status" if ready else "kubelet is not ready",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "osImage": "podiam test node",
                "kernelVersion": "", "kubeletVersion": "v0.0.0-standin", "kubeProxyVersion": "",
                "containerRuntimeVersion": "none://0", "machineID": "", "systemUUID": "", "bootID": "",
            },
        }
    }
    node: dict[str, Any] = cp.api("PATCH", f"/api/v1/nodes/{name}/status", status)
    return node


def set_node_ready(cp: _Api, name: str, ready: bool) -> dict[str, Any]:
    """Report the node Ready or NotReady, as its kubelet's heartbeat would."""
    now = _now()
    node = cp.api("GET", f"/api/v1/nodes/{name}")
    conditions = [c for c in node.get("status", {}).get("conditions", []) if c.get("type") != "Ready"]
    conditions.append({
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "kubelet is posting ready status" if ready else "kubelet is not ready",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
    updated: dict[str, Any] = cp.api("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": conditions}})
    return updated


def bind_pod(cp: _Api, namespace: str, pod: str, node: str) -> None:
    """Assign ``pod`` to ``node`` through the binding subresource, as the scheduler does."""
    cp.api("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/binding", {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    })


def set_pod_status(
    cp: _Api,
    namespace: str,
    pod: str,
    *,
    phase: str = "Running",
    pod_ip: str | None = None,
    host_ip: str | None = None,
    ready: bool = True,
) -> dict[str, Any]:
    """Write the pod's status as its kubelet would: phase, IPs, conditions, container statuses.

    ``host_ip`` defaults to the InternalIP of the node the pod is bound to.
    Returns the updated pod.
    """
    current = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
    node_name = current["spec"].get("nodeName")
    if host_ip is None and node_name:
        node = cp.api("GET", f"/api/v1/nodes/{node_name}")
        host_ip = next((a["address"] for a in node.get("status", {}).get("addresses", []) if a["type"] == "InternalIP"), None)
    now = _now()
    previous = current.get("status", {})
    started = previous.get("startTime", now)
    running = phase == "Running"
    containers_ready = running and ready
    terminated = phase in ("Succeeded", "Failed")

    def condition(kind: str, value: bool) -> dict[str, Any]:
        # Keep lastTransitionTime when the value did not change, as a kubelet does.
        old = next((c for c in previous.get("conditions", []) if c.get("type") == kind), None)
        status = "True" if value else "False"
        since = now if old is None or old.get("status") != status else old.get("lastTransitionTime", now)
        return {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}

    def container_status(container: dict[str, Any], init: bool = False) -> dict[str, Any]:
        state: dict[str, Any]
        if init or terminated:
            code = 1 if phase == "Failed" and not init else 0
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                    "startedAt": started, "finishedAt": now}}
        elif running:
            state = {"running": {"startedAt": started}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": f"containerd://{container['name']}-{pod}",
            "ready": containers_ready and not init,
            "started": running and not init,
            "restartCount": 0,
            "state": state,
        }

    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", pod_ip is not None),
            condition("Initialized", phase != "Pending" or pod_ip is not None),
            condition("ContainersReady", containers_ready),
            condition("Ready", containers_ready),
            condition("PodScheduled", bool(node_name)),
        ],
        "startTime": started,
        "containerStatuses": [container_status(c) for c in current["spec"].get("containers", [])],
        "qosClass": previous.get("qosClass", "BestEffort"),
    }
    init_containers = current["spec"].get("initContainers", [])
    if init_containers:
        status["initContainerStatuses"] = [container_status(c, init=True) for c in init_containers]
    if pod_ip is not None:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if host_ip is not None:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    # A merge patch replaces these lists whole, as a kubelet's status update does.
    updated: dict[str, Any] = cp.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod}/status", {"status": status})
    return updated


def delete_pod(cp: _Api, namespace: str, name: str, grace_period: int = 0) -> bool:
    """Delete a pod; ``grace_period=0`` also finishes one already terminating.

    With no kubelet, a bound pod deleted with a grace period stays Terminating
    forever (the kubelet is what ends it); a second call with 0 does the
    kubelet's final delete. Returns False if the pod did not exist.
    """
    try:
        cp.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
               {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": grace_period})
    except client.ApiError as error:
        if error.status == 404:
            return False
        raise
    return True
