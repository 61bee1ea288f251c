"""The local cluster's real nodes: build times, start time, pod start latency, memory.

    .venv/bin/python -m bench.cluster [--nodes 2] [--pods 20] [--starts 3] [--cold-builds]

As root. Measures, with the binaries and images already built (warm):
1. ``--starts`` times: a cluster of ``--nodes`` nodes from nothing to every node Ready
   (control plane, scheduler, network namespaces, containerd, images imported, kubelets);
2. pod create -> Running: ``--pods`` pods (python-base, sleeping), first one at a
   time, then all at once; from the create call returning to the phase Running
   being readable in the API;
3. resident memory of every component, per node.
With ``--cold-builds``, first builds the multi-call binary and every image into
empty caches (temporary folders; Go's module cache is kept, its build cache is
not) and reports how long each took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from localcluster.controlplane import cluster as clusters
from localcluster import processes
from localcluster.controlplane import node
from localcluster import pods
from localcluster.images import images
from localcluster import moto

REPO = Path(__file__).resolve().parents[2]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cold_builds() -> dict[str, Any]:
    """Build the binary and the images into empty caches; the wall time of each."""
    with tempfile.TemporaryDirectory(prefix="podiam-bench-cold-") as scratch:
        env = {**os.environ, "PODIAM_CONTROLPLANE_CACHE": f"{scratch}/controlplane",
               "PODIAM_IMAGES_CACHE": f"{scratch}/images", "GOCACHE": f"{scratch}/go-build"}
        results: dict[str, Any] = {}
        for name, argv in (("binary (kube-apiserver, controller-manager, scheduler, etcd, kubelet)",
                            [sys.executable, "-m", "localcluster.controlplane", "build"]),
                           ("images (python-base, pause, podiam-proxy, podiam-operator, aws-cli)",
                            [sys.executable, "-m", "localcluster.images", "build"])):
            began = time.monotonic()
            done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name}: build failed:\n{done.stderr[-3000:]}")
            results[name] = round(time.monotonic() - began, 1)
            print(f"cold build of {name}: {results[name]} s (load {_load()})", flush=True)
            if "images" in name:
                print(done.stdout, flush=True)
        subprocess.run(["buildah", "--root", f"{scratch}/images/storage", "--runroot", f"{scratch}/images/run",
                        "rm", "--all"], capture_output=True, check=False)
        subprocess.run(["buildah", "--root", f"{scratch}/images/storage", "--runroot", f"{scratch}/images/run",
                        "rmi", "--all", "--force"], capture_output=True, check=False)
        return results


def _pod_starts(cluster: clusters.Cluster, namespace: str, names: list[str], image: str) -> list[float]:
    """Create the pods back to back; seconds from each create returning to Running readable in the API."""
    created: dict[str, float] = {}
    for name in names:
        pods.create(cluster.plane, namespace, pods.sleeper(name, image))
        created[name] = time.monotonic()
    running: dict[str, float] = {}
    deadline = time.monotonic() + 180
    while len(running) < len(names) and time.monotonic() < deadline:
        listed = cluster.plane.api("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
        now = time.monotonic()
        for item in listed:
            name = item["metadata"]["name"]
            if name in created and name not in running and item.get("status", {}).get("phase") == "Running":
                running[name] = now - created[name]
        time.sleep(0.05)
    if len(running) < len(names):
        raise SystemExit(f"only {len(running)} of {len(names)} pods Running after 180 s")
    return [running[n] for n in names]


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2), "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max": round(ordered[-1], 2)}


def _memory(cluster: clusters.Cluster) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, pid in cluster.plane.pids().items():
        report[name] = round(_rss_mib(pid), 1)
    for member in cluster.nodes.values():
        per_node = {}
        for data in member.record.processes:
            record = processes.Record.from_json(data)
            if record.alive():
                per_node[record.name] = round(_rss_mib(record.pid), 1)
        shims = [_rss_mib(pid) for pid in node._shim_pids(member.record.socket)]
        per_node["containerd-shim (each)"] = round(statistics.mean(shims), 1) if shims else 0.0
        per_node["shims"] = len(shims)
        report[member.name] = per_node
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--cold-builds", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.cluster needs root (network namespaces, containerd, kubelet)")
    results: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_before": _load()}
    if args.cold_builds:
        results["cold_build_seconds"] = cold_builds()
    images.ensure_built(progress=True)
    with tempfile.TemporaryDirectory(prefix="podiam-bench-cluster-") as scratch:
        server = moto.MotoServer(Path(scratch)).start()
        try:
            starts = []
            for attempt in range(args.starts):
                began = time.monotonic()
                cluster = clusters.Cluster.start(Path(scratch) / f"c{attempt}", nodes=args.nodes, sts_endpoint=server.url,
                                                 progress=False)
                starts.append(round(time.monotonic() - began, 1))
                print(f"warm start of {args.nodes} nodes, all Ready: {starts[-1]} s (load {_load()})", flush=True)
                if attempt < args.starts - 1:
                    cluster.stop()
            try:
                image = cluster.images["python-base"].ref
                cluster.plane.create_namespace("bench")
                one_by_one = []
                for i in range(args.pods):
                    one_by_one += _pod_starts(cluster, "bench", [f"single-{i}"], image)
                burst = _pod_starts(cluster, "bench", [f"burst-{i}" for i in range(args.pods)], image)
                results.update({
                    "warm_start_seconds": starts,
                    "pod_create_to_running_seconds_one_at_a_time": _percentiles(one_by_one),
                    f"pod_create_to_running_seconds_{args.pods}_at_once": _percentiles(burst),
                    "rss_mib": _memory(cluster),
                })
            finally:
                cluster.stop()
        finally:
            server.stop()
    results["load_after"] = _load()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
