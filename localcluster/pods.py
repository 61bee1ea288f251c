"""Pod manifests for the e2e tier (pure functions) and the waits around them."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from localcluster.controlplane import controlplane


def pod(name: str, image: str, command: Sequence[str] = (), *, args: Sequence[str] = (), node: str | None = None,
        host_network: bool = False, restart: str = "Never", labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, str]] = (), node_selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "Never"}
    if command:
        container["command"] = list(command)
    if args:
        container["args"] = list(args)
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": restart, "terminationGracePeriodSeconds": 1,
                            "hostNetwork": host_network, "tolerations": list(tolerations)}
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if node:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), "kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": dict(labels or {}), "annotations": dict(annotations or {})},
            "spec": spec}


def yaml_dump(*manifests: Mapping[str, Any]) -> str:
    """Manifests as kubectl apply -f - reads them (JSON documents are YAML)."""
    return "\n---\n".join(json.dumps(m) for m in manifests)


def sleeper(name: str, image: str, **options: Any) -> dict[str, Any]:
    """A pod that stays up (for exec)."""
    return pod(name, image, ["/bin/sleep", "3600"], restart="Always", **options)


def create(plane: controlplane.ControlPlane, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = plane.api("POST", f"/api/v1/namespaces/{namespace}/pods", dict(manifest))
    return created


def get(plane: controlplane.ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    return found


def wait_phase(plane: controlplane.ControlPlane, namespace: str, name: str, phases: Sequence[str] = ("Running",),
               timeout: float = 90.0) -> dict[str, Any]:
    """The pod once its phase is one of ``phases`` (fails early, with its status, if it lands elsewhere for good)."""
    deadline = time.monotonic() + timeout
    while True:
        current = get(plane, namespace, name)
        phase = current.get("status", {}).get("phase")
        if phase in phases:
            return current
        if phase in ("Succeeded", "Failed") or time.monotonic() > deadline:
            raise AssertionError(f"pod {namespace}/{name} is {phase}, not {'/'.join(phases)}:\n"
                                 f"{json.dumps(current.get('status'), indent=1)[:3000]}")
        time.sleep(0.2)


def wait_ready(plane: controlplane.ControlPlane, namespace: str, name: str, timeout: float = 90.0) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        current = get(plane, namespace, name)
        conditions = current.get("status", {}).get("conditions", [])
        return current if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

    result = controlplane.wait_until(ready, timeout, f"pod {namespace}/{name} Ready", interval=0.2)
    assert result is not None  # wait_until returns only a truthy result
    return result


def exec_in(plane: controlplane.ControlPlane, namespace: str, name: str, *argv: str, check: bool = True,
            timeout: float = 60.0) -> str:
    """``kubectl exec`` (API server -> kubelet -> containerd), stdout."""
    return plane.kubectl("exec", "-n", namespace, name, "--", *argv, check=check, timeout=timeout)


def events(plane: controlplane.ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = plane.api("GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}")
    items: list[dict[str, Any]] = listed.get("items", [])
    return items
