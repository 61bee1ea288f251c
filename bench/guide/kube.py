"""What the bench reads from the API server: a pod watch with arrival times, and pod logs.

The watch stamps each change with this machine's clock when the API server
sends it, which is when the operator (a watcher too) can first see it; the
pods' own timestamps come from the same clock (containers share the kernel).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from typing import Any

from localcluster.controlplane import controlplane

ROLE_ANNOTATION = "iam.amazonaws.com/role"


def _context(plane: controlplane.ControlPlane) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    context.load_cert_chain(str(plane.admin_cert), str(plane.admin_key))
    return context


def text(plane: controlplane.ControlPlane, path: str, timeout: float = 30.0) -> str:
    """A GET whose answer is not JSON (pod logs)."""
    with urllib.request.urlopen(plane.server + path, context=_context(plane), timeout=timeout) as response:
        return str(response.read().decode(errors="replace"))


def json_lines(plane: controlplane.ControlPlane, namespace: str, pod: str, container: str | None = None) -> list[dict[str, Any]]:
    """The pod's log lines that are JSON objects."""
    query = f"?container={container}" if container else ""
    lines = []
    for line in text(plane, f"/api/v1/namespaces/{namespace}/pods/{pod}/log{query}").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


class PodWatch:
    """Per pod of one namespace: when the API server first showed it with an IP, Running, and without its role."""

    def __init__(self, plane: controlplane.ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace
        self.lock = threading.Lock()
        self.pods: dict[str, dict[str, Any]] = {}  # name -> uid, node, ip, and the first-seen times below
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{namespace}", daemon=True)

    def start(self) -> PodWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def get(self, name: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.pods.get(name, {}))

    def _run(self) -> None:
        version = self.plane.api("GET", f"/api/v1/namespaces/{self.namespace}/pods")["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            path = (f"/api/v1/namespaces/{self.namespace}/pods?watch=1&resourceVersion={version}"
                    "&timeoutSeconds=300&allowWatchBookmarks=true")
            try:
                with urllib.request.urlopen(self.plane.server + path, context=_context(self.plane), timeout=330) as stream:
                    for raw in stream:
                        seen = time.time()
                        event = json.loads(raw)
                        version = event["object"]["metadata"].get("resourceVersion", version)
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self._note(event["object"], seen)
                        if self._stop.is_set():
                            return
            except OSError:
                time.sleep(0.5)  # the watch ends every timeoutSeconds, or the server closed it: resume from version

    def _note(self, pod: dict[str, Any], seen: float) -> None:
        meta, status = pod["metadata"], pod.get("status", {})
        with self.lock:
            record = self.pods.setdefault(meta["name"], {"uid": meta["uid"], "added": seen})
            if record["uid"] != meta["uid"]:
                return  # a later pod under the same name: not measured
            record["node"] = pod["spec"].get("nodeName") or record.get("node")
            if status.get("podIP") and "ip_seen" not in record:
                record.update(ip=status["podIP"], ip_seen=seen)
            if status.get("phase") == "Running":
                record.setdefault("running_seen", seen)
            if ROLE_ANNOTATION not in (meta.get("annotations") or {}):
                record.setdefault("unannotated_seen", seen)
