"""Soak: podiam under continuous churn and random faults, its security invariants judged on every answer.

    .venv/bin/python -m bench.soak [--minutes 10] [--nodes 3] [--ips-per-node 12] [--sts-error-rate 0.1] [--seed N]

Starts its own control plane, moto STS behind the fault-injecting front, one
real proxy per fake node and two operator replicas (one active, one standby),
then for ``--minutes``:

- churn: pods are created (on a free IP of a node's pool, with one of a few
  roles or none) and deleted, or finished, continuously; an IP is handed to
  a new pod only once the checker says a kubelet could reuse it;
- faults, one every ``--fault-every`` seconds on average: SIGKILL of a random
  operator replica (a replacement starts at once, as a Deployment would),
  SIGKILL of a random node's proxy (restarted after up to 2 s); STS answers
  ``--sts-error-rate`` of all calls with 503 or Throttling throughout;
- requests: ``--threads`` threads ask as every IP of every pool (held or not)
  without pause; :mod:`localcluster.invariants` judges each answer (another
  pod's credentials, credentials for a role-less or released IP, expired or
  unknown credentials, a revocation later than its bound, any 5xx);
- after each recovery (and at the end) every bound running pod must get its
  credentials within ``--served-bound`` seconds, else a ``not-served`` violation.

Prints the counts (requests, faults injected by kind, churn, violations by
kind) as JSON and exits 1 on any violation. Bounded: at most ``--minutes``
plus the final checks; everything on 127.0.0.0/8; all processes stopped and
the work folder removed at the end.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from localcluster.controlplane import ControlPlane
from localcluster import invariants, moto
from localcluster import stack as stacks

ACCOUNT = "123456789012"
NAMESPACE = "soak"


def arn(role: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{role}"


@dataclasses.dataclass
class Slot:
    node: stacks.Node
    ip: str
    pod: str | None = None
    role: str | None = None


class Soak:
    def __init__(self, args: argparse.Namespace, stack: stacks.Stack, checker: invariants.Checker) -> None:
        self.args = args
        self.stack = stack
        self.checker = checker
        self.rng = random.Random(args.seed)
        self.slots = [Slot(node, stack.next_ip()) for node in stack.nodes for _ in range(args.ips_per_node)]
        self.counts: collections.Counter[str] = collections.Counter()
        self.recoveries: list[dict[str, Any]] = []
        self.serve_times: list[float] = []
        self._names = 0
        self._lock = threading.Lock()

    # --- churn -----------------------------------------------------------------------

    def _name(self) -> str:
        self._names += 1
        return f"s{self._names}"

    def create(self, slot: Slot) -> None:
        role = self.rng.choice([None] + [f"soak-role-{i}" for i in range(self.args.roles)])
        name = self._name()
        with self.checker.change(slot.node.name, slot.ip, uid=name, role_arn=arn(role) if role else None):
            self.stack.create_pod(NAMESPACE, name, role=role, node=slot.node, ip=slot.ip)
        slot.pod, slot.role = name, role
        self.counts["pods_created"] += 1

    def end(self, slot: Slot) -> None:
        assert slot.pod is not None
        how = self.rng.choice(["delete", "delete", "finish", "unannotate"]) if slot.role else "delete"
        with self.checker.change(slot.node.name, slot.ip, uid=None if how != "unannotate" else slot.pod, role_arn=None):
            if how == "delete":
                self.stack.delete_pod(NAMESPACE, slot.pod)
            elif how == "finish":
                self.stack.finish_pod(NAMESPACE, slot.pod)
            else:
                self.stack.annotate_pod(NAMESPACE, slot.pod, {"iam.amazonaws.com/role": None})
        self.counts[f"pods_{how}d" if how != "finish" else "pods_finished"] += 1
        if how == "unannotate":
            slot.role = None  # still the IP's holder, with no role
            return
        if how == "finish":
            # A finished pod's object stays until deleted; its IP is free for the kubelet.
            try:
                self.stack.delete_pod(NAMESPACE, slot.pod)
            except Exception:
                pass
        slot.pod, slot.role = None, None

    def churn_step(self) -> None:
        held = [s for s in self.slots if s.pod is not None]
        free = [s for s in self.slots if s.pod is None and self.checker.reusable(s.node.name, s.ip)]
        if free and (not held or self.rng.random() < 0.55):
            self.create(self.rng.choice(free))
        elif held:
            self.end(self.rng.choice(held))

    # --- faults ----------------------------------------------------------------------

    def kill_operator(self) -> float:
        alive = [p for p in self.stack.operators if p.alive()]
        victim = self.rng.choice(alive)
        self.checker.outage()
        killed = time.monotonic()
        victim.kill()
        self.stack.operators.remove(victim)
        self.stack.start_operator()  # the Deployment's replacement: a standby unless it was alone
        self.counts["fault:operator_sigkill"] += 1
        # Recovered once a change made after the kill is served: a leader is active again.
        probe = next((s for s in self.slots if s.pod is None and self.checker.reusable(s.node.name, s.ip)), None)
        if probe is not None:
            with self._lock:
                self.create_probe(probe)
            self.wait_served(probe, 90)
        self.checker.recovered()
        return time.monotonic() - killed

    def create_probe(self, slot: Slot) -> None:
        name = self._name()
        with self.checker.change(slot.node.name, slot.ip, uid=name, role_arn=arn("soak-role-0")):
            self.stack.create_pod(NAMESPACE, name, role="soak-role-0", node=slot.node, ip=slot.ip)
        slot.pod, slot.role = name, "soak-role-0"
        self.counts["pods_created"] += 1

    def kill_proxy(self) -> float:
        node = self.rng.choice(self.stack.nodes)
        killed = time.monotonic()
        node.proxy.kill()
        time.sleep(self.rng.uniform(0, 2))
        node.proxy.start()
        self.counts["fault:proxy_sigkill"] += 1
        return time.monotonic() - killed

    # --- liveness ------------------------------------------------------------------------

    def served_now(self, slot: Slot) -> bool:
        answer = invariants.ask(slot.node.proxy, slot.node.name, slot.ip)
        if answer.document is None:
            return False
        return self.checker.role_of_key(str(answer.document["AccessKeyId"])) == arn(slot.role or "")

    def wait_served(self, slot: Slot, bound: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < bound:
            if self.served_now(slot):
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def verify_all_served(self, what: str) -> float:
        """Every bound running pod gets its credentials within the bound; returns the slowest."""
        with self._lock:
            bound = [s for s in self.slots if s.pod is not None and s.role is not None]
        started = time.monotonic()
        slowest = 0.0
        for slot in bound:
            remaining = self.args.served_bound - (time.monotonic() - started)
            took = self.wait_served(slot, max(0.0, remaining))
            if took is None and slot.pod is not None and slot.role is not None:
                violation = invariants.Violation("not-served", slot.node.name, slot.ip,
                                                 f"{slot.pod} ({slot.role}) not served {self.args.served_bound:g}s after {what}",
                                                 time.monotonic())
                self.checker.violations.append(violation)
                self.checker.counts["violation:not-served"] += 1
            slowest = max(slowest, time.monotonic() - started)
        self.serve_times.append(slowest)
        return slowest

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> None:
        deadline = time.monotonic() + self.args.minutes * 60
        next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.args.fault_every
        codes = [(503, "ServiceUnavailable"), (400, "Throttling")]
        self.stack.sts.set_faults(error_rate=self.args.sts_error_rate, error_status=503, error_code="ServiceUnavailable")
        while time.monotonic() < deadline:
            with self._lock:
                self.churn_step()
            time.sleep(self.rng.uniform(0, 2 * self.args.churn_interval))
            if time.monotonic() >= next_fault:
                kind = self.rng.choice(["operator", "proxy"])
                took = self.kill_operator() if kind == "operator" else self.kill_proxy()
                slowest = self.verify_all_served(f"{kind} recovery")
                self.recoveries.append({"fault": kind, "recovered_s": round(took, 2), "all_served_s": round(slowest, 2)})
                status, code = self.rng.choice(codes)
                self.stack.sts.set_faults(error_rate=self.args.sts_error_rate, error_status=status, error_code=code)
                next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.args.fault_every
                print(f"[{time.strftime('%H:%M:%S')}] {kind} SIGKILL: recovered in {took:.1f}s, every bound pod served "
                      f"{slowest:.1f}s later; {self.checker.counts['requests']} requests, "
                      f"{len(self.checker.violations)} violations", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--ips-per-node", type=int, default=12)
    parser.add_argument("--roles", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--churn-interval", type=float, default=0.5, help="mean seconds between pod changes")
    parser.add_argument("--fault-every", type=float, default=40.0, help="mean seconds between process kills")
    parser.add_argument("--sts-error-rate", type=float, default=0.1)
    parser.add_argument("--served-bound", type=float, default=15.0, help="seconds after a recovery by which every bound pod is served")
    parser.add_argument("--revoke-bound", type=float, default=5.0, help="seconds after a release (or recovery) by which its role is gone")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    args.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    if not 0 < args.minutes <= 120:
        parser.error("--minutes must be in (0, 120]")

    workdir = Path(tempfile.mkdtemp(prefix="podiam-soak-"))
    cp = moto_server = front = stack = None
    started = time.monotonic()
    try:
        cp = ControlPlane.start(workdir / "cp")
        moto_server = moto.MotoServer(workdir).start()
        front = moto.StsFront(workdir, moto_server.url).start()
        stack = stacks.Stack(cp, front, workdir / "stack", nodes=args.nodes, anti_entropy=2.0,
                             proxy_args=["--credential-wait", "0.1", "--log-level", "warning"],
                             # 15-minute sessions renewed every 18 s: STS (and its injected errors) is
                             # called all along, not only when a role first appears.
                             operator_env={"PODIAM_LOG_LEVEL": "WARNING", "PODIAM_SESSION_DURATION": "900",
                                           "PODIAM_REFRESH_POINT": "0.02"})
        stack.start()
        stack.start_operator()  # a standby
        stack.create_namespace(NAMESPACE, ".*")
        checker = invariants.Checker(front.issued_keys, grace=1.0, revoke_bound=args.revoke_bound)
        soak = Soak(args, stack, checker)
        print(f"soak: {args.minutes:g} min, {args.nodes} nodes x {args.ips_per_node} IPs, seed {args.seed}", flush=True)
        front.reset_stats()
        with invariants.Poller(checker, lambda: [(s.node, s.ip) for s in soak.slots], threads=args.threads, interval=0.0, keep=1000):
            soak.run()
            front.clear_faults()
            soak.verify_all_served("the end of the run")
        stats = front.stats()
        report = {
            "command": "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "seed": args.seed,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "requests": checker.counts["requests"],
            "answers": {k: v for k, v in sorted(checker.counts.items()) if not k.startswith("violation:") and k != "requests"},
            "faults_injected": {
                **{k.removeprefix("fault:"): v for k, v in soak.counts.items() if k.startswith("fault:")},
                **{f"sts_{code}": n for code, n in stats["injected"].items()},
            },
            "sts_calls": stats["actions"],
            "churn": {k: v for k, v in soak.counts.items() if k.startswith("pods_")},
            "recoveries": len(soak.recoveries),
            "slowest_recovery_s": max((r["recovered_s"] for r in soak.recoveries), default=None),
            "slowest_all_served_after_recovery_s": max(soak.serve_times, default=None),
            "bounds": {"served_s": args.served_bound, "revoke_s": args.revoke_bound, "grace_s": checker.grace},
            "violations": len(checker.violations),
            "violations_by_kind": {k.removeprefix("violation:"): v for k, v in checker.counts.items() if k.startswith("violation:")},
            "first_violations": [str(v) for v in checker.violations[:10]],
        }
        print(json.dumps(report, indent=2))
        return 1 if checker.violations else 0
    finally:
        for part in (stack, front, moto_server, cp):
            if part is not None:
                try:
                    part.stop()
                except Exception as error:  # keep stopping the others
                    print(f"stopping {type(part).__name__}: {error}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
