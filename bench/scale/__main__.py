"""Operator at scale: thousands of nodes and up to 150,000 pods, one real operator.

    .venv/bin/python -m bench.scale [--steps 5000:500,20000:2000,50000:5000,150000:5000]
                                    [--rate 100] [--window 30] [--roles 50] [--max-minutes 90]

Starts its own control plane (localcluster/controlplane; pods and nodes are
API objects, no kubelet: this bench plays the kubelets' and scheduler's
writes), moto STS behind the counting front, the real operator
(``python -m podiam_operator``) and ``bench.scale.farm``: every node's proxy
push side in one process (real mutual TLS on each node's own loopback
address, the push API and the proxy's own store; see its docstring).

Each step ``PODS:NODES`` grows the cluster to NODES nodes (a Node and a
proxy pod each) and PODS annotated, running pods (``--roles`` roles over
``--roles`` namespaces), then prints, as soon as each is measured:

- ``fill``: how fast pods were written and how long the operator took to
  put them all on their proxies (it catches up after a burst);
- ``grant``: pods start at ``--rate`` per second for ``--window`` seconds
  (create, then the pod's IP in its status, as a scheduler and kubelet would);
  per pod, the time from the IP write returning to its credentials being
  servable on its node's proxy (p50/p99/max);
- ``bindings``: the same pods' PodRoleBindings, from the IP write to the
  binding existing and to its status saying Bound, and how many pods had
  no binding yet when the starts ended; ``kubectl get podrolebindings``
  totals against annotated pods;
- ``revoke``: ``--rate`` annotation removals per second, from the write
  returning to the proxy no longer serving the pod;
- the operator's RSS (MiB), CPU (cores, over the step's grant window), the
  API writes it sent per second (apiserver_request_total for the kinds only
  the operator writes: PodRoleBindings, Events, ConfigMaps, nodes' taints,
  kopf's peering), and AssumeRole calls so far.

At the end (after the last step): anti-entropy, the operator's CPU per
``--anti-entropy`` interval with nothing changing; full resync, the operator
killed and a new one started, until every node's proxy got its snapshot.

Bounded: every wait has a deadline and the whole run stops after
``--max-minutes``. All traffic stays on 127.0.0.0/8 (node addresses
127.100.0.0/16; pod IPs are only data, nothing is sent to them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench import procfs
from localcluster import moto, ports, processes
from localcluster import stack as stacks
from localcluster.controlplane import ControlPlane

GROUP, VERSION, PLURAL = "podiam.io", "v1alpha1", "podrolebindings"
# Kinds only the operator writes here (the bench writes pods, nodes and namespaces).
OPERATOR_RESOURCES = {"podrolebindings", "events", "configmaps", "kopfpeerings", "clusterkopfpeerings", "nodes"}
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}
APISERVER_FLAGS = (
    # The bench plays every kubelet and the scheduler through one client: let it (and the operator) in.
    "--max-requests-inflight=800", "--max-mutating-requests-inflight=400",
)


def out(label: str, **figures: Any) -> None:
    """One line of figures, printed (and flushed) as soon as they are measured."""
    print(json.dumps({"at": time.strftime("%H:%M:%S"), "what": label, **figures}), flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000, 1)


def spread(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": pct(values, 0.5), "p99_ms": pct(values, 0.99),
            "max_ms": round(max(values) * 1000, 1) if values else None}





def pod_ip(n: int) -> str:
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def node_address(i: int) -> str:
    return f"127.100.{i // 250}.{1 + i % 250}"


class Api:
    """The bench's own client of the API server (admin), async, retrying what the server asks to retry."""

    def __init__(self, cp: ControlPlane) -> None:
        context = ssl.create_default_context(cafile=str(cp.ca_file))
        context.load_cert_chain(str(cp.admin_cert), str(cp.admin_key))
        self.base = cp.server
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=64),
                                             timeout=aiohttp.ClientTimeout(total=60))

    async def call(self, method: str, path: str, body: Any = None, *, patch: str = "merge", ok: tuple[int, ...] = ()) -> Any:
        headers = {"Content-Type": f"application/{patch}-patch+json" if method == "PATCH" else "application/json"}
        for attempt in range(20):
            async with self.session.request(method, self.base + path, data=None if body is None else json.dumps(body),
                                            headers=headers) as response:
                if response.status in (429, 500, 503, 504):
                    await asyncio.sleep(min(2.0, 0.1 * (attempt + 1)))
                    continue
                text = await response.text()
                if response.status >= 400 and response.status not in ok:
                    raise RuntimeError(f"{method} {path}: HTTP {response.status} {text[:300]}")
                return json.loads(text) if text and response.content_type == "application/json" else text
        raise RuntimeError(f"{method} {path}: still refused after 20 attempts")

    async def close(self) -> None:
        await self.session.close()


class Cluster:
    """What the bench writes: nodes with their proxy pods, namespaces, pods (created bound, then Running with an IP)."""

    def __init__(self, api: Api, roles: int) -> None:
        self.api = api
        self.roles = roles
        self.nodes: list[str] = []
        self.pods = 0  # annotated pods created so far (all steps)

    async def add_nodes(self, count: int, concurrency: int = 32) -> None:
        async def one(i: int) -> None:
            name, address = f"node-{i}", node_address(i)
            await self.api.call("POST", "/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
            await self.api.call("PATCH", f"/api/v1/nodes/{name}/status", {"status": {
                "addresses": [{"type": "InternalIP", "address": address}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bench"}]}})
            pod = f"podiam-proxy-{name}"
            await self.api.call("POST", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": stacks.PROXY_NAMESPACE, "labels": dict(stacks.PROXY_LABELS)},
                "spec": {"nodeName": name, "hostNetwork": True, "containers": [{"name": "proxy", "image": "podiam-proxy"}]}})
            await self.api.call("PATCH", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/pods/{pod}/status",
                                {"status": running(address, address)})

        await bounded([lambda i=i: one(i) for i in range(len(self.nodes), count)], concurrency)  # type: ignore[misc]
        self.nodes = [f"node-{i}" for i in range(count)]

    async def namespace(self, name: str) -> None:
        await self.api.call("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": {"iam.amazonaws.com/permitted": "bench-role-.*"}}}, ok=(409,))

    async def start_pod(self, namespace: str, n: int) -> tuple[str, float, float]:
        """Create pod n bound to its node, then report it Running with its IP: (ip, before, after) that status write."""
        name, node = f"pod-{n}", self.nodes[n % len(self.nodes)]
        await self.api.call("POST", f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"iam.amazonaws.com/role": f"bench-role-{n % self.roles}"}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]}})
        ip = pod_ip(n)
        before = time.time()
        await self.api.call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                            {"status": running(ip, node_address(n % len(self.nodes)))})
        return ip, before, time.time()

    async def remove_role(self, namespace: str, n: int) -> float:
        await self.api.call("PATCH", f"/api/v1/namespaces/{namespace}/pods/pod-{n}",
                            {"metadata": {"annotations": {"iam.amazonaws.com/role": None}}})
        return time.time()


def running(ip: str, host_ip: str) -> dict[str, Any]:
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}


async def bounded(jobs: list[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    semaphore = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


async def paced(jobs: list[Callable[[], Awaitable[Any]]], rate: float, in_flight: int = 200) -> list[Any]:
    """Start job i at i/rate seconds (as pods start on a busy cluster), at most ``in_flight`` unfinished."""
    semaphore = asyncio.Semaphore(in_flight)
    began = time.monotonic()

    async def run(i: int, job: Callable[[], Awaitable[Any]]) -> Any:
        await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(i, job) for i, job in enumerate(jobs)))


class FarmEvents:
    """Tails the farm's event file: when each pod IP became servable / stopped being, snapshots per node."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.snapshots: dict[str, float] = {}  # node -> last snapshot time
        self.checks = 0
        self._offset = 0

    def poll(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode().splitlines():
            t_text, kind, *rest = line.split()
            t = float(t_text)
            if kind == "add":
                self.added.setdefault(rest[1], t)
            elif kind == "del":
                self.deleted.setdefault(rest[1], t)
            elif kind == "snapshot":
                self.snapshots[rest[0]] = t
            elif kind == "check":
                self.checks += 1

    async def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if done():
                return True
            await asyncio.sleep(0.1)
        self.poll()
        return done()


class BindingWatch:
    """Watches one namespace's PodRoleBindings: when each appeared and when its status first said Bound."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.created: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}?watch=1&allowWatchBookmarks=false"
        while True:
            try:
                async with self.api.session.get(self.api.base + path, timeout=aiohttp.ClientTimeout(total=None)) as response:
                    async for line in response.content:
                        event = json.loads(line)
                        name = event["object"]["metadata"]["name"]
                        now = time.time()
                        self.created.setdefault(name, now)
                        if (event["object"].get("status") or {}).get("phase") == "Bound":
                            self.bound.setdefault(name, now)
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError):
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self._task:
            self._task.cancel()


async def apiserver_writes(api: Api) -> dict[str, float]:
    """apiserver_request_total for the operator's kinds, writes only, by 'resource/verb'."""
    text = await api.call("GET", "/metrics")
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and labels.get("resource") in OPERATOR_RESOURCES and labels.get("verb") in WRITE_VERBS:
                key = f"{labels['resource']}{'/' + labels['subresource'] if labels.get('subresource') else ''}/{labels['verb']}"
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


async def count(api: Api, path: str) -> int:
    page = await api.call("GET", f"{path}?limit=1")
    return len(page.get("items", [])) + int(page.get("metadata", {}).get("remainingItemCount") or 0)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.cp: ControlPlane | None = None
        self._cp_cpu: dict[str, float] = {}
        self._cp_since = time.monotonic()

    def control_plane(self) -> dict[str, Any]:
        """kube-apiserver's and etcd's RSS (MiB) and CPU (cores) since the last call: is the cluster itself the limit?"""
        assert self.cp is not None
        now, figures = time.monotonic(), {}
        for name, pid in self.cp.pids().items():
            if name not in ("kube-apiserver", "etcd"):
                continue
            cpu = procfs.cpu_seconds(pid)
            figures[name] = {"rss_mib": procfs.rss_mib(pid), "cpu_cores": round((cpu - self._cp_cpu.get(name, 0.0)) / (now - self._cp_since), 2)}
            self._cp_cpu[name] = cpu
        self._cp_since = now
        return figures

    def left(self, wanted: float) -> float:
        return max(1.0, min(wanted, self.deadline - time.monotonic()))

    async def run(self) -> None:
        args = self.args
        out("machine", host=platform.node(), cores=os.cpu_count(), python=platform.python_version(), loadavg=procfs.loadavg())
        cp = self.cp = ControlPlane.start(self.workdir / "cp", apiserver_flags=APISERVER_FLAGS)
        moto_server = moto.MotoServer(self.workdir).start()
        front = moto.StsFront(self.workdir, moto_server.url).start()
        stack = stacks.Stack(cp, front, self.workdir / "stack", nodes=0, anti_entropy=args.anti_entropy,
                             operator_env={"PODIAM_LOG_LEVEL": args.operator_log_level,
                                           "PODIAM_PEERING_LIFETIME": "15",  # the chart's default: the takeover time
                                           **json.loads(os.environ.get("BENCH_OPERATOR_ENV", "{}"))})
        api = Api(cp)
        farm = None
        try:
            stack.start(operator=False)
            assert stack.server_files is not None
            biggest = max(nodes for _, nodes in args.steps)
            addresses = [[f"node-{i}", node_address(i)] for i in range(biggest)]
            (self.workdir / "nodes.json").write_text(json.dumps(addresses))
            port = ports.free_port()
            stack.control_port = port
            events_path, ready = self.workdir / "farm-events", self.workdir / "farm-ready"
            events_path.touch()
            farm = processes.ManagedProcess("farm", [
                sys.executable, "-m", "bench.scale.farm", "--nodes", str(self.workdir / "nodes.json"), "--port", str(port),
                "--cert", str(stack.server_files.cert), "--key", str(stack.server_files.key), "--ca", str(stack.server_files.ca),
                "--events", str(events_path), "--ready", str(ready)], self.workdir / "farm.log", cwd=stacks.REPO)
            farm.start()
            stacks.wait_for(ready.exists, 300, "the farm's listeners")
            events = FarmEvents(events_path)
            operator = stack.start_operator()
            time.sleep(5)
            out("operator idle", rss_mib=procfs.rss_mib(operator.pid), loadavg=procfs.loadavg())
            cluster = Cluster(api, args.roles)
            for r in range(args.roles):
                await cluster.namespace(f"fill-{r}")
            for step, (pods, nodes) in enumerate(args.steps):
                if time.monotonic() > self.deadline:
                    out("stopped", reason="--max-minutes reached")
                    break
                await self.step(step, pods, nodes, cluster, events, api, stack, front)
            else:
                await self.idle_cost(stack, events)
                await self.resync(stack, events, len(cluster.nodes))
                await self.takeover(stack, events, len(cluster.nodes))
        finally:
            await api.close()
            if farm:
                farm.stop()
            stack.stop()
            front.stop()
            moto_server.stop()
            cp.stop()

    async def step(self, step: int, pods: int, nodes: int, cluster: Cluster, events: FarmEvents, api: Api,
                   stack: stacks.Stack, front: moto.StsFront) -> None:
        args = self.args
        operator = stack.operator
        # --- nodes and their proxies -------------------------------------------------------
        if nodes > len(cluster.nodes):
            began = time.monotonic()
            new = [f"node-{i}" for i in range(len(cluster.nodes), nodes)]
            await cluster.add_nodes(nodes)
            written = time.monotonic() - began
            synced = await events.wait(lambda: all(n in events.snapshots for n in new), self.left(600))
            out(f"step {step}: nodes", nodes=nodes, added=len(new), write_s=round(written, 1),
                all_snapshots_s=round(time.monotonic() - began, 1), all_synced=synced)
        # --- fill: as fast as the API server takes them, then wait for the operator ---------
        measured = int(args.rate * args.window)
        fill = max(0, pods - measured - cluster.pods)
        began = time.monotonic()
        first = cluster.pods
        results = await bounded([lambda n=n: cluster.start_pod(f"fill-{n % args.roles}", n)  # type: ignore[misc]
                                 for n in range(first, first + fill)], 48)
        cluster.pods += fill
        written = time.monotonic() - began
        ips = [ip for ip, _, _ in results]
        caught_up = await events.wait(lambda: all(ip in events.added for ip in ips), self.left(1800))
        served_s = round(time.monotonic() - began, 1)
        bindings_path = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
        while (bindings := await count(api, bindings_path)) < cluster.pods and time.monotonic() < self.deadline:
            await asyncio.sleep(1.0)
        out(f"step {step}: fill", pods=fill, write_s=round(written, 1), pods_per_s=round(fill / written, 1) if written else None,
            all_served_s=served_s, all_served=caught_up, missing=sum(1 for ip in ips if ip not in events.added),
            all_bindings_s=round(time.monotonic() - began, 1), podrolebindings=bindings, rss_mib=procfs.rss_mib(operator.pid),
            loadavg=procfs.loadavg())
        # --- grant: pods start at --rate per second --------------------------------------------
        namespace = f"measure-{step}"
        await cluster.namespace(namespace)
        watch = BindingWatch(api, namespace)
        watch.start()
        await asyncio.sleep(1)
        self.control_plane()  # from here: the grant window's figures
        writes_before, cpu_before, t_before = await apiserver_writes(api), procfs.cpu_seconds(operator.pid), time.monotonic()
        first = cluster.pods
        started = await paced([lambda n=n: cluster.start_pod(namespace, n)  # type: ignore[misc]
                               for n in range(first, first + measured)], args.rate)
        cluster.pods += measured
        window = time.monotonic() - t_before
        cpu = (procfs.cpu_seconds(operator.pid) - cpu_before) / window
        writes = {k: round((v - writes_before.get(k, 0.0)) / window, 1) for k, v in (await apiserver_writes(api)).items()
                  if v - writes_before.get(k, 0.0) > 0}
        no_binding_yet = measured - len(watch.created)
        await events.wait(lambda: all(ip in events.added for ip, _, _ in started), self.left(120))
        grants = [events.added[ip] - after for ip, _, after in started if ip in events.added]
        out(f"step {step}: grant", pods_total=cluster.pods, nodes=len(cluster.nodes), rate=round(measured / window, 1),
            **spread(grants), never=measured - len(grants), operator_cpu_cores=round(cpu, 2),
            operator_rss_mib=procfs.rss_mib(operator.pid), operator_writes_per_s=writes,
            operator_writes_per_s_total=round(sum(writes.values()), 1), control_plane=self.control_plane(), loadavg=procfs.loadavg())
        names = {ip: f"pod-{n}" for n, (ip, _, _) in zip(range(first, first + measured), started)}
        binding_deadline = time.monotonic() + self.left(120)
        while time.monotonic() < binding_deadline and len(watch.bound) < measured:
            await asyncio.sleep(0.5)
        exists = [watch.created[names[ip]] - after for ip, _, after in started if names[ip] in watch.created]
        bound = [watch.bound[names[ip]] - after for ip, _, after in started if names[ip] in watch.bound]
        total_bindings = await count(api, f"/apis/{GROUP}/{VERSION}/{PLURAL}")
        out(f"step {step}: bindings", created=spread(exists), bound=spread(bound), no_binding_when_starts_ended=no_binding_yet,
            never_bound=measured - len(bound), podrolebindings_total=total_bindings, annotated_pods=cluster.pods)
        watch.stop()
        # --- revoke: annotations removed at --rate per second ------------------------------------
        revoked = list(range(first, first + min(measured, args.revocations)))
        removed = await paced([lambda n=n: cluster.remove_role(namespace, n) for n in revoked], args.rate)  # type: ignore[misc]
        revoked_ips = [pod_ip(n) for n in revoked]
        await events.wait(lambda: all(ip in events.deleted for ip in revoked_ips), self.left(120))
        refused = [events.deleted[ip] - t for ip, t in zip(revoked_ips, removed) if ip in events.deleted]
        cluster.pods -= len(revoked)
        out(f"step {step}: revoke", **spread(refused), never=len(revoked) - len(refused),
            assume_role_calls=len(front.assume_role_calls()), operator_rss_mib=procfs.rss_mib(operator.pid), loadavg=procfs.loadavg())

    async def idle_cost(self, stack: stacks.Stack, events: FarmEvents) -> None:
        operator = stack.operator
        await asyncio.sleep(5)
        events.poll()
        checks, cpu, began = events.checks, procfs.cpu_seconds(operator.pid), time.monotonic()
        await asyncio.sleep(2 * self.args.anti_entropy)
        events.poll()
        spent = time.monotonic() - began
        per_interval = (procfs.cpu_seconds(operator.pid) - cpu) / spent * self.args.anti_entropy
        out("anti-entropy", interval_s=self.args.anti_entropy, operator_cpu_s_per_interval=round(per_interval, 2),
            status_reads_per_interval=round((events.checks - checks) / spent * self.args.anti_entropy),
            operator_rss_mib=procfs.rss_mib(operator.pid), loadavg=procfs.loadavg())

    async def resync(self, stack: stacks.Stack, events: FarmEvents, nodes: int) -> None:
        stack.operator.kill()  # as a crash would
        began = time.time()
        new = stack.start_operator(wait=False)
        await self.snapshots_since("full resync", began, events, nodes, new, "from the new operator's start; includes "
                                   "the start-up listing and the wait for the killed replica's peering record to expire")

    async def takeover(self, stack: stacks.Stack, events: FarmEvents, nodes: int) -> None:
        """A standby already running (listed, waiting for leadership) when the active replica dies."""
        standby = stack.start_operator(wait=True)
        await asyncio.sleep(self.args.standby_settle)
        active = next(p for p in stack.operators if p is not standby and p.alive())
        active.kill()
        await self.snapshots_since("takeover", time.time(), events, nodes, standby, "from the active replica's SIGKILL; "
                                   "includes the peering lifetime (PODIAM_PEERING_LIFETIME) the standby waits before it takes over")

    async def snapshots_since(self, label: str, began: float, events: FarmEvents, nodes: int,
                              operator: processes.ManagedProcess, note: str) -> None:
        """Prints when the first and the last of ``nodes`` proxies got a snapshot after ``began`` (wall clock)."""
        done = await events.wait(lambda: sum(1 for t in events.snapshots.values() if t > began) >= nodes, self.left(600))
        times = sorted(t - began for t in events.snapshots.values() if t > began)
        out(label, nodes=nodes, every_proxy_snapshot_s=round(times[-1], 1) if done and times else None,
            first_snapshot_s=round(times[0], 1) if times else None, proxies_with_snapshot=len(times),
            operator_rss_mib=procfs.rss_mib(operator.pid), note=note, loadavg=procfs.loadavg())


def parse_steps(text: str) -> list[tuple[int, int]]:
    steps = []
    for part in text.split(","):
        pods, _, nodes = part.partition(":")
        steps.append((int(pods), int(nodes)))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=parse_steps, default=parse_steps("5000:500,20000:2000,50000:5000,150000:5000"),
                        help="PODS:NODES,... (cumulative)")
    parser.add_argument("--rate", type=float, default=100.0, help="pod starts (and annotation removals) per second")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of paced starts per step")
    parser.add_argument("--revocations", type=int, default=1000, help="annotation removals per step")
    parser.add_argument("--roles", type=int, default=50)
    parser.add_argument("--anti-entropy", type=float, default=30.0, help="the operator's anti-entropy interval (its default)")
    parser.add_argument("--standby-settle", type=float, default=60.0, help="seconds the standby runs before the takeover")
    parser.add_argument("--max-minutes", type=float, default=90.0)
    parser.add_argument("--operator-log-level", default="WARNING")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and say where")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="podiam-bench-scale-"))
    try:
        asyncio.run(Bench(args, workdir).run())
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
