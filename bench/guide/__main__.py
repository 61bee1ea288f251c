"""The guide on real nodes: how soon a real pod has its role, how soon it loses it, and who fails at start.

    sudo .venv/bin/python -m bench.guide [--pods 50] [--wave 10] [--no-pod-ips] [--raw FILE]

As root (real nodes: localcluster/controlplane). A two-node cluster, podiam
installed with helm and the user's values (localcluster/release.py), then:

1. the guide's Deployment, scaled to ``--pods`` in waves of ``--wave`` (the
   scheduler spreads them), its entrypoint running ``aws sts
   get-caller-identity`` from the container's first instant until it
   succeeds, then sampling its credentials every ``--sampler-interval``:
   pod Running (as the API server first showed it) -> first success, and
   every 404, error or wrong role a pod saw before its annotation was removed;
2. for each of those pods in turn, the role annotation removed -> the first
   request that got no credentials (a poller run with kubectl exec);
3. ``--pods`` fast-start pods (fast_start/main.go, the AWS SDK for Go v2 and
   botocore's single attempt, both from the first instant): how many failed,
   and when each pod's IP appeared in the API and its proxy first served it,
   measured from the container's start. With ``--no-pod-ips`` (the chart's
   proxy.podIps off) the proxy serves a pod once the operator pushed its
   entry, so that is when the entry arrived.

Prints the machine, the load before and after, progress, and a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from bench.guide import image, kube, pods
from demo import iam
from localcluster import helm as helms
from localcluster.controlplane import cluster as clusters
from localcluster.controlplane import controlplane
from localcluster import guide
from localcluster import release as releases
from localcluster.images import images
from localcluster import moto, netns

GUARD_COMMENT = "podiam-bench-guide-guard"
WAVE_TIMEOUT = 240.0  # seconds for one wave of pods to start and log their results
POLLER_SECONDS = 30.0  # how long a revocation poller waits for the refusal
PROXY_WAIT = 0.8  # the chart's gatewayTimeoutCreation, which the bench leaves at its default


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {_load()}] {message}", flush=True)


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} cores ({model}), {memory_kib / 2**20:.0f} GiB, {platform.system()} {platform.release()}"


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:  # nearest rank
        return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))], 3)

    return {"n": len(ordered), "min": round(ordered[0], 3), "p50": rank(0.5), "p99": rank(0.99), "max": round(ordered[-1], 3)}


def _namespace(plane: controlplane.ControlPlane, name: str) -> None:
    plane.create_namespace(name, annotations={"iam.amazonaws.com/permitted": f"^{pods.POD_ROLE}$"})


def _scale_in_waves(plane: controlplane.ControlPlane, namespace: str, deployment: str, watch: kube.PodWatch,
                    total: int, wave: int, done: Callable[[str], bool]) -> None:
    """Scale up ``wave`` pods at a time, each wave once the previous one's pods are all ``done``."""
    for target in range(min(wave, total), total + wave, wave):
        target = min(target, total)
        plane.api("PATCH", f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}", {"spec": {"replicas": target}})
        deadline = time.monotonic() + WAVE_TIMEOUT
        while True:
            with watch.lock:
                names = list(watch.pods)
            finished = [name for name in names if done(name)]
            if len(finished) >= target:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{deployment}: only {len(finished)} of {target} pods done after {WAVE_TIMEOUT:.0f} s")
            time.sleep(2)
        _say(f"{deployment}: {target} of {total} pods done")
        if target == total:
            return


class _Logs:
    """Each pod's JSON log lines, read until ``complete`` says they hold everything wanted."""

    def __init__(self, plane: controlplane.ControlPlane, namespace: str, complete: Callable[[list[dict[str, Any]]], bool]) -> None:
        self.plane, self.namespace, self.complete = plane, namespace, complete
        self.lines: dict[str, list[dict[str, Any]]] = {}

    def done(self, pod: str) -> bool:
        if pod in self.lines:
            return True
        try:
            lines = kube.json_lines(self.plane, self.namespace, pod)
        except OSError:  # not started yet: no logs
            return False
        if self.complete(lines):
            self.lines[pod] = lines
            return True
        return False


# ---- 1 and 2: the guide's Deployment -----------------------------------------------------------------


def _guide(cluster: clusters.Cluster, sts: moto.StsFront, args: argparse.Namespace) -> dict[str, Any]:
    plane, namespace = cluster.plane, "guide-bench"
    _namespace(plane, namespace)
    watch = kube.PodWatch(plane, namespace).start()
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pods.guide_cli(cluster, sts.url, args.sampler_interval)))
    logs = _Logs(plane, namespace, lambda lines: any(line.get("event") == "cli" and line["rc"] == 0 for line in lines))
    _scale_in_waves(plane, namespace, "aws-iam-tester", watch, args.pods, args.wave, logs.done)
    time.sleep(args.settle)  # the samplers run meanwhile: every pod's steady state, not only its start
    refusals = {name: _revoke(plane, namespace, name, watch) for name in sorted(logs.lines)}
    _say(f"{len(refusals)} annotations removed, one pod at a time")
    records = []
    for name, lines in sorted(logs.lines.items()):
        seen = watch.get(name)
        removed = seen.get("unannotated_seen", float("inf"))
        full = kube.json_lines(plane, namespace, name)  # the samples since, too
        attempts = [line for line in full if line.get("event") == "cli"]
        first_success = next(line["t"] for line in attempts if line["rc"] == 0)
        samples = [line for line in full if "event" not in line and line["t"] < removed - 1.0]
        records.append({
            "pod": name, "node": seen.get("node"), "ip": seen.get("ip"), "removed": removed,
            "start": next((line["t"] for line in full if line.get("event") == "start"), None),
            "running_seen": seen.get("running_seen"), "first_success": first_success,
            "failed_attempts": [line.get("error") for line in attempts if line["rc"] != 0],
            "wrong_arn": [line["arn"] for line in attempts if line["rc"] == 0 and f"/{pods.POD_ROLE}/" not in line["arn"]],
            "samples": len(samples),
            "sample_404": sum(1 for s in samples if s.get("status") == 404),
            "sample_other_status": sum(1 for s in samples if "status" in s and s["status"] != 404),
            "sample_errors": sum(1 for s in samples if "error" in s),
            "sample_wrong_role": sum(1 for s in samples if "role" in s and s["role"] != pods.POD_ROLE),
            **refusals[name],
        })
    watch.stop()
    return {"records": records, "summary": _guide_summary(records)}


def _revoke(plane: controlplane.ControlPlane, namespace: str, pod: str, watch: kube.PodWatch) -> dict[str, Any]:
    """Remove the pod's role annotation while a poller in it asks every 10 ms; when was it refused?"""
    poller = subprocess.Popen(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "exec", "-n", namespace, pod, "--",
         "python3", "-c", pods.REFUSAL_POLLER, str(POLLER_SECONDS)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if _line(poller, 60.0) != "ready":
            return {"refusal": "poller never got credentials"}
        plane.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod}", {"metadata": {"annotations": {kube.ROLE_ANNOTATION: None}}})
        patched = time.time()
        answer = json.loads(_line(poller, POLLER_SECONDS + 10) or "{}")
    finally:
        poller.kill()
        poller.wait()
    removed = watch.get(pod).get("unannotated_seen", patched)
    if "refused" not in answer:
        return {"refusal": f"not refused within {POLLER_SECONDS:.0f} s: {answer}"}
    return {"removed_to_refused": round(answer["refused"] - removed, 3), "refusal_status": answer["status"],
            "refusal_answered_after": round(answer["answered"] - answer["refused"], 3)}


def _line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else ""


def _guide_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    saw = [r for r in records if r["failed_attempts"] or r["wrong_arn"] or r["sample_404"] or r["sample_other_status"]
           or r["sample_wrong_role"] or r["sample_errors"]]
    return {
        "pods": len(records),
        "per_node": {node: sum(1 for r in records if r["node"] == node) for node in sorted({str(r["node"]) for r in records})},
        "running_to_first_success_s": _spread([r["first_success"] - r["running_seen"] for r in records if r["running_seen"]]),
        "container_start_to_first_success_s": _spread([r["first_success"] - r["start"] for r in records if r["start"]]),
        "pods_whose_first_cli_attempt_failed": sum(1 for r in records if r["failed_attempts"]),
        "cli_errors": sorted({e for r in records for e in r["failed_attempts"]}),
        "samples_before_removal": sum(r["samples"] for r in records),
        "pods_that_saw_a_404_error_or_wrong_role": len(saw),
        "annotation_removed_to_refused_s": _spread([r["removed_to_refused"] for r in records if "removed_to_refused" in r]),
        "refusal_404_answered_after_s": _spread([r["refusal_answered_after"] for r in records if "refusal_answered_after" in r]),
        "not_refused": [r["pod"] + ": " + r["refusal"] for r in records if "refusal" in r],
    }


# ---- 3: fast-start pods ------------------------------------------------------------------------------


def _fast_start(cluster: clusters.Cluster, sts: moto.StsFront, fast: images.Image, args: argparse.Namespace) -> dict[str, Any]:
    plane, namespace = cluster.plane, "fast-start-bench"
    _namespace(plane, namespace)
    watch = kube.PodWatch(plane, namespace).start()
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pods.fast_start(cluster, sts.url, fast.ref)))
    wanted = {"start", "sdk", "strict", "served"}
    logs = _Logs(plane, namespace, lambda lines: wanted <= {line.get("event") for line in lines})
    _scale_in_waves(plane, namespace, "fast-start", watch, args.pods, args.wave, logs.done)
    records = []
    for name, lines in sorted(logs.lines.items()):
        seen = watch.get(name)
        events = {line["event"]: line for line in lines if "event" in line}
        records.append({
            "pod": name, "node": seen.get("node"), "ip": seen.get("ip"), "added": seen.get("added"),
            "start": events["start"]["t"], "ip_seen": seen.get("ip_seen"), "running_seen": seen.get("running_seen"),
            "served": events["served"]["t"], "served_role": events["served"].get("role"),
            "strict_ok": events["strict"]["ok"], "strict_t": events["strict"]["t"],
            "strict_error": events["strict"].get("error"), "strict_role": events["strict"].get("role"),
            "sdk_ok": events["sdk"]["ok"], "sdk_t": events["sdk"]["t"], "sdk_error": events["sdk"].get("error"),
            "sdk_arn": events["sdk"].get("arn"),
        })
    watch.stop()
    return {"records": records, "summary": _fast_summary(records)}


def _fast_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    with_ip = [r for r in records if r["ip_seen"]]
    return {
        "pods": len(records),
        "per_node": {node: sum(1 for r in records if r["node"] == node) for node in sorted({str(r["node"]) for r in records})},
        "one_attempt_1s_timeout_failed": sum(1 for r in records if not r["strict_ok"]),
        "go_sdk_v2_failed": sum(1 for r in records if not r["sdk_ok"]),
        "wrong_role": sum(1 for r in records if (r["strict_role"] or pods.POD_ROLE) != pods.POD_ROLE
                          or (r["sdk_arn"] and f"/{pods.POD_ROLE}/" not in r["sdk_arn"])
                          or r["served_role"] != pods.POD_ROLE),
        "errors": sorted({str(e) for r in records for e in (r["strict_error"], r["sdk_error"]) if e}),
        "container_start_to_ip_in_api_s": _spread([r["ip_seen"] - r["start"] for r in with_ip]),
        "ip_in_api_to_first_served_s": _spread([r["served"] - r["ip_seen"] for r in with_ip]),
        "container_start_to_first_served_s": _spread([r["served"] - r["start"] for r in records]),
        # 50 ms: the watch's and the pod's clocks are one, but the two stamps are taken in different processes.
        "served_before_the_ip_was_in_the_api": sum(1 for r in with_ip if r["served"] < r["ip_seen"] - 0.05),
        f"first_served_later_than_the_proxy_wait_{PROXY_WAIT:g}s_after_start":
            sum(1 for r in records if r["served"] - r["start"] > PROXY_WAIT),
        "container_start_to_running_in_api_s": _spread([r["running_seen"] - r["start"] for r in records if r["running_seen"]]),
    }


# ---- the proxies' own account ------------------------------------------------------------------------


def _proxy_404s(release: releases.Release, cutoffs: dict[str, dict[str, float]]) -> dict[str, int]:
    """Per phase: the 404s the proxies logged for that phase's pod IPs, each before its cutoff (the removal)."""
    counts = dict.fromkeys(cutoffs, 0)
    for proxy in release.pods("proxy"):
        logs = kube.text(release.plane, f"/api/v1/namespaces/{release.namespace}/pods/{proxy['metadata']['name']}/log?container=proxy")
        for line in logs.splitlines():
            if '"no pod known at this IP"' not in line and '"no servable credentials for the pod"' not in line:
                continue
            entry = json.loads(line)
            when = datetime.datetime.fromisoformat(entry["time"]).timestamp()
            for phase, ips in cutoffs.items():
                counts[phase] += when < ips.get(entry.get("source_ip", ""), 0.0)
    return counts


def _lookups(cluster: clusters.Cluster) -> dict[str, int]:
    """The proxies' credential lookups by result, summed over the nodes (their /metrics)."""
    totals: dict[str, int] = {}
    for member in cluster.nodes.values():
        with urllib.request.urlopen(f"http://{member.ip}:8183/metrics", timeout=10) as answer:
            for line in answer.read().decode().splitlines():
                match = re.fullmatch(r'podiam_proxy_credential_lookups_total\{result="(\w+)"\} (\S+)', line)
                if match:
                    totals[match[1]] = totals.get(match[1], 0) + int(float(match[2]))
    return totals


def _values(cluster: clusters.Cluster, pod_ips: bool) -> dict[str, Any]:
    """The user's values, and proxy.podIps: on or off and, on, only this cluster's CNI networks (the nodes share the
    machine's /var/lib/cni/results with every other cluster on it, whose pods reuse the same IPs)."""
    networks = "|".join(re.escape(member.record.cni_network) for member in cluster.nodes.values())
    return {"proxy": {"podIps": {"enabled": pod_ips, "cniNetworks": networks}}}


# ---- the whole run -----------------------------------------------------------------------------------


def _interrupt(*_: Any) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM: unwind, so the cluster and the guard are removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guide", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=50, help="pods per phase (default 50)")
    parser.add_argument("--wave", type=int, default=10, help="pods started at a time (default 10)")
    parser.add_argument("--sampler-interval", type=float, default=1.0, help="seconds between a guide pod's samples")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds the samplers run before the revocations")
    parser.add_argument("--skip-guide", action="store_true", help="only the fast-start pods")
    parser.add_argument("--pod-ips", action=argparse.BooleanOptionalAction, default=True,
                        help="the chart's proxy.podIps (default on; --no-pod-ips: starting pods wait for the operator)")
    parser.add_argument("--raw", type=Path, help="write every pod's record here (JSON)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.guide needs root (network namespaces, containerd, kubelet)")
    signal.signal(signal.SIGTERM, _interrupt)
    results: dict[str, Any] = {"command": "python -m bench.guide " + " ".join(argv if argv is not None else sys.argv[1:]),
                               "machine": _machine(), "load_before": _load(), "pod_ips": args.pod_ips}
    _say(f"machine: {results['machine']}")
    built = images.ensure_built(progress=True)
    fast = image.ensure_built(built["python-base"])
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="podiam-bench-guide-") as scratch, contextlib.ExitStack() as stack:
        if netns.forwarding() != "0":
            raise SystemExit("net.ipv4.ip_forward is on in the root namespace: refusing to run real nodes")
        guard = netns.RejectGuard(GUARD_COMMENT).install()
        stack.callback(guard.remove)
        server = moto.MotoServer(Path(scratch)).start()
        stack.callback(server.stop)
        sts = moto.StsFront(Path(scratch), server.url).start()
        stack.callback(sts.stop)
        iam.create_roles(server.url)
        _say("starting two real nodes")
        cluster = clusters.Cluster.start(Path(scratch) / "cluster", nodes=2, sts_endpoint=server.url,
                                         forward_ports=[sts.port], progress=False)
        stack.callback(cluster.stop)
        cluster.check_safety()
        for member in cluster.nodes.values():
            images.import_into(str(member.record.socket), [fast])
        release = releases.Release(cluster, helms.Helm(helms.install_helm()), sts.url, values=_values(cluster, args.pod_ips))
        _say("helm install")
        release.install()
        release.wait_proxies_ready()
        cutoffs: dict[str, dict[str, float]] = {}  # phase -> pod IP -> until when a 404 counts
        if not args.skip_guide:
            _say(f"the guide's Deployment: {args.pods} pods, {args.wave} at a time")
            cli = _guide(cluster, sts, args)
            raw["guide"], results["guide"] = cli["records"], cli["summary"]
            cutoffs["guide"] = {str(r["ip"]): r["removed"] for r in cli["records"]}
            results["load_after_guide"] = _load()
            cluster.plane.kubectl("delete", "namespace", "guide-bench", "--wait=true", "--timeout=120s", check=False)
        _say(f"fast-start pods: {args.pods}, {args.wave} at a time")
        fast_results = _fast_start(cluster, sts, fast, args)
        raw["fast_start"], results["fast_start"] = fast_results["records"], fast_results["summary"]
        cutoffs["fast_start"] = {str(r["ip"]): float("inf") for r in fast_results["records"]}
        results["proxy_logged_404s_for_bench_pods"] = _proxy_404s(release, cutoffs)
        results["proxy_credential_lookups"] = _lookups(cluster)
        results["node_role_leaks"] = guide.node_role_leaks(cluster)
        cluster.check_safety()
    results["load_after"] = _load()
    if args.raw:
        args.raw.write_text(json.dumps(raw, indent=1) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
