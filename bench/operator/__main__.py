"""Operator benchmark: a burst of annotated pods over fake nodes, on the real stack.

    .venv/bin/python -m bench.operator [--pods 500] [--nodes 10] [--roles 5] [--rss-pods 5000]

Starts its own control plane (localcluster/controlplane), moto STS behind the
counting front, one real proxy per fake node and the operator, then:

1. creates ``--pods`` pods carrying ``iam.amazonaws.com/role`` (``--roles``
   distinct roles), bound round-robin to the nodes, without IPs yet;
2. burst: reports every pod Running with its IP (16 threads, as fast as the
   API server takes them) and measures, per pod, the time from its status
   write returning (the IP is in the API; ``grant_from_call_*`` count from
   the start of that call instead) to the answer of the first request that
   gets a credential document from its node's proxy at the pod's source
   address (the proxy holds a request up to 0.8 s while the entry is on its
   way, so one request per pod in flight measures it);
3. revocation: removes every pod's annotation in a burst and measures the
   time from that write returning to the answer of the first request that
   gets no credentials (``revoke_*``: the pod's 404, which the proxy holds up
   to its ``--credential-wait``, 0.8 s, as for any pod it has no entry for),
   and to the answer of the last request that still got credentials
   (``revoke_last_served_*``: the last credential document the pod received;
   pods refused from their first request on are counted in
   ``revoke_refused_at_once``);
4. counts AssumeRole calls (moto front) and reads the operator's RSS;
5. grows the cluster to ``--rss-pods`` annotated, running pods and reads the
   operator's RSS again once every pod-owned binding exists.

Latencies are as measured, never clipped: the operator may see a write
through its watch before the writer's HTTP call returns, so a pod can be
served (or refused) "before" the write and its latency is negative;
``*_before_write`` counts those. RSS is VmRSS in MiB (``rss_mib_*``); the
idle figure is the operator's, started and leading, before the first pod.
``loadavg_*`` is /proc/loadavg (1, 5, 15 minutes) at the start, after each
phase and at the end: the machine may be shared.

Everything is bounded in time; all traffic is on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procfs
from localcluster.controlplane import ControlPlane, kubelet
from localcluster import moto
from localcluster import stack as stacks

CRED_PATH = "/latest/meta-data/iam/security-credentials/"


async def _status(host: str, port: int, source: str, path: str) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(source, 0)), 5)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        await asyncio.wait_for(reader.read(), 5)
        return int(line.split()[1])
    finally:
        writer.close()


async def _until(host: str, port: int, source: str, path: str, want_ok: bool, deadline: float) -> tuple[float | None, float | None]:
    """When (perf_counter) the answers of the last request with the other outcome and of the first with the wanted one arrived."""
    other = None
    while time.perf_counter() < deadline:
        try:
            status = await _status(host, port, source, path)
        except (OSError, asyncio.TimeoutError):
            status = 0
        if (status == 200) == want_ok:
            return other, time.perf_counter()
        other = time.perf_counter()
        await asyncio.sleep(0.02)
    return other, None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]




def latencies(results: dict[str, Any], name: str, values: list[float]) -> None:
    """p50, p99, min and max in ms, and how many are negative (the outcome before the write returned)."""
    if not values:
        return
    for label, value in (("p50", percentile(values, 0.5)), ("p99", percentile(values, 0.99)), ("min", min(values)), ("max", max(values))):
        results[f"{name}_{label}_ms"] = round(1000 * value, 1)
    results[f"{name}_before_write"] = sum(1 for v in values if v < 0)


def operator_pid(stack: stacks.Stack) -> int:
    return stack.operator.pid  # ManagedProcess runs python directly (no shell)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="podiam-bench-operator-"))
    results: dict[str, Any] = {"pods": args.pods, "nodes": args.nodes, "roles": args.roles,
                               "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
                               "loadavg_start": procfs.loadavg()}
    cp = ControlPlane.start(workdir / "cp")
    moto_server = moto.MotoServer(workdir).start()
    front = moto.StsFront(workdir, moto_server.url).start()
    stack = stacks.Stack(cp, front, workdir / "stack", nodes=args.nodes, taint_nodes=True, anti_entropy=30.0,
                         operator_env={"PODIAM_LOG_LEVEL": "WARNING"})
    pool = concurrent.futures.ThreadPoolExecutor(16)
    try:
        stack.start()
        time.sleep(args.settle)  # the operator started, leading, no pod yet
        results["rss_mib_idle"] = procfs.rss_mib(operator_pid(stack))
        ns = "bench"
        stack.create_namespace(ns, "bench-.*")
        names = [f"pod-{i}" for i in range(args.pods)]
        nodes = {name: stack.nodes[i % args.nodes] for i, name in enumerate(names)}
        roles = {name: f"bench-role-{i % args.roles}" for i, name in enumerate(names)}
        ips = {name: stack.next_ip() for name in names}

        def create(name: str) -> None:
            stack.create_pod(ns, name, role=roles[name], node=nodes[name])

        t = time.monotonic()
        list(pool.map(create, names))
        results["create_seconds"] = round(time.monotonic() - t, 1)
        time.sleep(args.settle)  # let the operator fetch the roles and push them to the nodes

        # --- burst: IP appears -> credentials served -------------------------------------------
        marks: dict[str, float] = {}

        called: dict[str, float] = {}

        def set_ip(name: str) -> None:
            called[name] = time.perf_counter()
            kubelet.set_pod_status(cp, ns, name, pod_ip=ips[name], host_ip=nodes[name].ip)
            # The IP "appears" when the API server has it: when its status write returns.
            marks[name] = time.perf_counter()

        async def measure_grant() -> dict[str, tuple[float | None, float | None]]:
            deadline = time.perf_counter() + args.timeout
            loop = asyncio.get_running_loop()
            burst = loop.run_in_executor(None, lambda: list(pool.map(set_ip, names)))
            outcomes = await asyncio.gather(*(
                _until(nodes[n].ip, stack.metadata_port, ips[n], CRED_PATH + roles[n], True, deadline) for n in names))
            await burst
            return dict(zip(names, outcomes))

        t = time.monotonic()
        served = {n: first for n, (_, first) in asyncio.run(measure_grant()).items()}
        results["burst_seconds"] = round(time.monotonic() - t, 1)
        grant = [served_at - marks[n] for n in names if (served_at := served[n]) is not None]
        from_call = [served_at - called[n] for n in names if (served_at := served[n]) is not None]
        results["grant_missing"] = sum(1 for n in names if served[n] is None)
        latencies(results, "grant", grant)
        latencies(results, "grant_from_call", from_call)
        results["assume_role_calls"] = front.assume_role_count()
        results["rss_mib_at_burst"] = procfs.rss_mib(operator_pid(stack))
        results["loadavg_after_burst"] = procfs.loadavg()

        # --- revocation: annotation removed -> no credentials ---------------------------------
        removed: dict[str, float] = {}

        def unannotate(name: str) -> None:
            stack.annotate_pod(ns, name, {"iam.amazonaws.com/role": None})
            removed[name] = time.perf_counter()  # when the API server has the change

        async def measure_revoke() -> dict[str, tuple[float | None, float | None]]:
            deadline = time.perf_counter() + args.timeout
            loop = asyncio.get_running_loop()
            burst = loop.run_in_executor(None, lambda: list(pool.map(unannotate, names)))
            await asyncio.sleep(0)
            outcomes = await asyncio.gather(*(
                _until(nodes[n].ip, stack.metadata_port, ips[n], CRED_PATH + roles[n], False, deadline) for n in names))
            await burst
            return dict(zip(names, outcomes))

        outcomes = asyncio.run(measure_revoke())
        revoked_at = {n: first for n, (_, first) in outcomes.items()}
        last_served = {n: last for n, (last, _) in outcomes.items()}
        revoke = [refused_at - removed[n] for n in names if (refused_at := revoked_at[n]) is not None and n in removed]
        results["revoke_missing"] = sum(1 for n in names if revoked_at[n] is None)
        latencies(results, "revoke", revoke)
        latencies(results, "revoke_last_served", [last - removed[n] for n in names if (last := last_served[n]) is not None and n in removed])
        results["revoke_refused_at_once"] = sum(1 for n in names if last_served[n] is None and revoked_at[n] is not None)
        results["loadavg_after_revocation"] = procfs.loadavg()

        # --- RSS with many pods ---------------------------------------------------------------------
        if args.rss_pods:
            more = [f"rss-{i}" for i in range(args.rss_pods - args.pods)]

            def create_running(i_name: tuple[int, str]) -> None:
                i, name = i_name
                stack.create_pod(ns, name, role=f"bench-role-{i % args.roles}", node=stack.nodes[i % args.nodes], ip="auto")

            t = time.monotonic()
            list(pool.map(create_running, enumerate(more)))
            # Re-annotate the first pods too, so every pod carries a role.
            list(pool.map(lambda n: stack.annotate_pod(ns, n, {"iam.amazonaws.com/role": roles[n]}), names))
            results["rss_create_seconds"] = round(time.monotonic() - t, 1)

            def bindings() -> int:
                # (no label selector: the API server omits remainingItemCount with one)
                listing = cp.api("GET", f"/apis/podiam.io/v1alpha1/namespaces/{ns}/podrolebindings?limit=1")
                return len(listing["items"]) + int(listing["metadata"].get("remainingItemCount", 0))

            try:
                stacks.wait_for(lambda: bindings() >= args.rss_pods, args.timeout * 4, "all pod-owned bindings", interval=2.0)
            except TimeoutError as error:
                results["rss_note"] = str(error)[:200]
            time.sleep(5)
            results["rss_pods_total"] = args.rss_pods
            results["rss_mib_at_rss_pods"] = procfs.rss_mib(operator_pid(stack))
            results["assume_role_calls_total"] = front.assume_role_count()
            # Spot check: a few of the new pods are served.
            for name in more[:: max(1, len(more) // 5)]:
                pod = cp.api("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
                node = next(n for n in stack.nodes if n.name == pod["spec"]["nodeName"])
                stack.wait_credentials(node, pod["status"]["podIP"], timeout=60)
        results["loadavg_end"] = procfs.loadavg()
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        stack.stop()
        front.stop()
        moto_server.stop()
        cp.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--roles", type=int, default=5)
    parser.add_argument("--rss-pods", type=int, default=5000, help="grow to this many pods for the RSS figure (0: skip)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds between the operator's start and the idle RSS, and between creating the pods and the IP burst")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound for each phase")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
