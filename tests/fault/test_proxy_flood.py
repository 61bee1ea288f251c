"""A pod holding thousands of connections to its node's proxy denies nothing to the other pods or to the operator.

A real proxy process on loopback, started with 1,024 file descriptors (soft
and hard, through ``prlimit``, as a container runtime may give it), serving
a few pods on its four ports (metadata, container credentials, control, health). Hostile pods (``tests/fault/flooder.py``, processes of their own)
open connections as fast as the bound lets them and hold them: silent ones,
and ones that send part of a request head (or of a TLS record on the
control port), re-opening whatever the proxy closes. Meanwhile the other
pods ask for credentials on fresh connections with the SDKs' 1 s timeout,
the operator pushes changes over mutual TLS, and the kubelet asks
``/readyz``: every one of them must succeed, and the pods' p99 stay under
``P99_BOUND``. Bounded: ``FLOOD_SECONDS`` of flood, at most ``RATE`` new
connections a second per flooder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metadata_proxy import wire
from localcluster import certs, ports
from localcluster.proxy import ProxyProcess, http_request, pod_entry, role_credentials

pytestmark = pytest.mark.fault

HOST = "127.0.0.60"  # the node: where the proxy listens and the kubelet probes from
PODS = [f"127.0.61.{i}" for i in range(1, 9)]
ATTACKER = "127.0.62.1"
CREDS = "/latest/meta-data/iam/security-credentials/"
DESCRIPTORS = 1024
FLOOD_SECONDS = 14.0
MEASURE_SECONDS = 8.0
RATE = 2000  # new connections a second, per flooder
P99_BOUND = 0.25  # seconds; the SDKs give the metadata service 1 s


CREDENTIALS_PORT = ports.free_port(HOST)  # EKS Pod Identity's endpoint: the pods' second port


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    running = ProxyProcess(tmp_path, certs.make_pki(tmp_path / "pki"), HOST,
                           args=["--credential-wait", "0", "--container-credentials-port", str(CREDENTIALS_PORT)])
    running.process.argv[:0] = ["prlimit", f"--nofile={DESCRIPTORS}:{DESCRIPTORS}", "--"]
    running.start()
    roles = [role_credentials(f"k{i}", f"Role{i}") for i in range(len(PODS))]
    running.push_snapshot(wire.Snapshot(generation=1, roles=roles, pods=[pod_entry(ip, f"k{i}") for i, ip in enumerate(PODS)]))
    try:
        yield running
    finally:
        running.stop()


class Flooder:
    def __init__(self, port: int, sources: list[str], hold: int, *, rate: int = RATE, tls: bool = False) -> None:
        argv = [sys.executable, "-m", "tests.fault.flooder", "--host", HOST, "--port", str(port), "--hold", str(hold),
                "--seconds", str(FLOOD_SECONDS), "--rate", str(rate), *(["--tls"] if tls else [])]
        for source in sources:
            argv += ["--source", source]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def result(self) -> dict[str, int]:
        out, _ = self.process.communicate(timeout=FLOOD_SECONDS + 30)
        assert self.process.returncode == 0
        return dict(json.loads(out))


def repeat(until: float, interval: float, action: Callable[[], object], results: list[tuple[float, object]]) -> threading.Thread:
    """Run ``action`` every ``interval`` s until ``until``, recording (seconds taken, result or exception)."""

    def run() -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                outcome: object = action()
            except Exception as error:  # noqa: BLE001 - a failure is a result here
                outcome = error
            results.append((time.monotonic() - started, outcome))
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(proxy: ProxyProcess) -> dict[str, object]:
    """Pods, the operator and the kubelet at work for MEASURE_SECONDS; what each got."""
    until = time.monotonic() + MEASURE_SECONDS
    cpu_before = cpu_seconds(proxy.process.pid)
    pods: list[tuple[float, object]] = []
    pushes: list[tuple[float, object]] = []
    probes: list[tuple[float, object]] = []
    fds: list[tuple[float, object]] = []
    threads = [
        repeat(until, 0.0, lambda ip=ip, role=f"Role{i}": http_request(  # type: ignore[misc]
            proxy.host, proxy.metadata_port, "GET", CREDS + role, source_ip=ip, timeout=1.0).status, pods)
        for i, ip in enumerate(PODS[:4])
    ]
    counter = iter(range(1_000_000))
    threads.append(repeat(until, 0.5, lambda: proxy.push_changes(
        wire.Changes(upsert_roles=[role_credentials(f"extra{next(counter)}", "Extra")])).applied, pushes))
    threads.append(repeat(until, 0.5, lambda: proxy.health("/readyz").status, probes))
    threads.append(repeat(until, 0.1, lambda: descriptors(proxy.process.pid), fds))
    for thread in threads:
        thread.join()
    latencies = sorted(seconds for seconds, _ in pods)
    return {
        "pod_requests": len(pods),
        "pod_failures": [repr(outcome) for _, outcome in pods if outcome != 200][:5],
        "pod_p50": latencies[len(latencies) // 2],
        "pod_p99": latencies[int(len(latencies) * 0.99)],
        "pod_max": latencies[-1],
        "pushes": len(pushes),
        "push_failures": [repr(outcome) for _, outcome in pushes if not isinstance(outcome, int)],
        "push_max": max(seconds for seconds, _ in pushes),
        "probe_failures": [repr(outcome) for _, outcome in probes if outcome != 200],
        "descriptors_max": max(int(count) for _, count in fds if isinstance(count, int)),  # type: ignore[call-overload]
        "proxy_cpu": (cpu_seconds(proxy.process.pid) - cpu_before) / MEASURE_SECONDS,
        "load": Path("/proc/loadavg").read_text().split()[0],
    }


def dropped(proxy: ProxyProcess) -> dict[str, float]:
    prefix = "podiam_proxy_connections_dropped_total{"
    return {line[len(prefix):].split("}")[0]: float(line.split()[-1]) for line in proxy.metrics().splitlines() if line.startswith(prefix)}


def test_one_pod_holding_thousands_of_connections_starves_no_other_pod_nor_the_operator(proxy: ProxyProcess) -> None:
    flooders = [
        Flooder(proxy.metadata_port, [ATTACKER], hold=3000),
        Flooder(proxy.control_port, [ATTACKER], hold=1000, tls=True),
        Flooder(proxy.health_port, [ATTACKER], hold=1000),
        Flooder(CREDENTIALS_PORT, [ATTACKER], hold=1000),
    ]
    time.sleep(2.0)  # the flood is on
    seen = measure(proxy)
    floods = [flooder.result() for flooder in flooders]
    print(f"\n{json.dumps(seen)}\nflooders (metadata, control, health, credentials): {json.dumps(floods)}\ndropped: {dropped(proxy)}")
    assert floods[0]["attempts"] >= 3000  # thousands of connections from one pod
    assert seen["pod_failures"] == [] and seen["push_failures"] == [] and seen["probe_failures"] == []
    assert seen["pod_p99"] < P99_BOUND  # type: ignore[operator]
    assert seen["descriptors_max"] < DESCRIPTORS  # type: ignore[operator]
    counts = dropped(proxy)
    for port in ("metadata", "control", "health", "credentials"):
        assert counts.get(f'port="{port}",reason="source_cap"', 0) > 0, counts
    assert proxy.process.alive()


def test_many_pods_holding_silent_connections_are_evicted_for_the_ones_that_ask(proxy: ProxyProcess) -> None:
    # 24 sources x 100 connections: more than the metadata port's whole share of descriptors, and 5 times the control
    # port's. Each connection the proxy closes is opened again: every one admitted evicts one (TLS set-up included).
    attackers = [f"127.0.63.{i}" for i in range(1, 25)]
    flooders = [Flooder(proxy.metadata_port, attackers, hold=2400, rate=RATE // 2),
                Flooder(proxy.control_port, attackers, hold=600, rate=RATE // 2, tls=True)]
    time.sleep(2.0)
    seen = measure(proxy)
    floods = [flooder.result() for flooder in flooders]
    print(f"\n{json.dumps(seen)}\nflooders (metadata, control): {json.dumps(floods)}\ndropped: {dropped(proxy)}")
    assert seen["pod_failures"] == [] and seen["push_failures"] == [] and seen["probe_failures"] == []
    assert seen["pod_p99"] < P99_BOUND  # type: ignore[operator]
    assert seen["descriptors_max"] < DESCRIPTORS  # type: ignore[operator]
    assert dropped(proxy).get('port="metadata",reason="evicted"', 0) > 0
