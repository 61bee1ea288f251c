"""``python -m demo [--mode auto|nodes|standin|netns|loopback] [--keep]``: run the demo; exit 0 only if every step behaved."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from types import FrameType

from demo import checks, nodes_cluster, nodes_guide, show, standin_cluster, standin_guide, standin_pods

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
MODES = {
    "auto": "real nodes when root and they start, else the stand-in (the default)",
    "nodes": "real nodes, or fail saying why",
    "standin": "the stand-in: the pod in a network namespace when root, else on loopback",
    "netns": "the stand-in with the pod in a network namespace, or fail",
    "loopback": "the stand-in with the pod on loopback",
}


@dataclasses.dataclass
class Started:
    """What runs, for the logs of a failed run and the clean-up's last line."""

    nodes: nodes_cluster.Nodes | None = None
    standin: standin_cluster.Cluster | None = None

    def logs(self) -> str:
        if self.nodes is not None:
            return nodes_cluster.logs(self.nodes)
        if self.standin is None:
            return ""
        parts = []
        processes = [*self.standin.stack.operators, *(n.proxy.process for n in self.standin.stack.nodes)]
        for process in processes:
            tail = process.log().strip().splitlines()[-15:]
            if tail:
                parts += [f"--- {process.name} (last lines of {process.log_path}) ---", *tail]
        return "\n".join(parts)

    def stopped(self) -> str:
        if self.nodes is not None:
            return "stopped the nodes (kubelets, containerd, their pods, network namespaces), moto and the control plane"
        if self.standin is not None:
            return "stopped the operator, the proxies, moto and the control plane"
        return "stopped everything the demo started"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _run(mode: str, workdir: Path, cleanup: contextlib.ExitStack, started: Started) -> None:
    show.step("Mode")
    if mode in ("auto", "nodes"):
        reason = nodes_cluster.unavailable()
        if reason is None:
            show.say(f"nodes: {nodes_cluster.WHY}")
            try:
                started.nodes = nodes_cluster.start_nodes(workdir, cleanup)
            except nodes_cluster.NodesFailed as failure:
                reason = f"a node could not start ({failure})"
            else:
                _nodes(started.nodes, workdir, cleanup)
                return
        if mode == "nodes":
            raise checks.DemoFailure(f"real nodes cannot run here: {reason}")
        show.say(f"standin: real nodes cannot run here: {reason}")
    _standin("auto" if mode in ("auto", "standin") else mode, workdir, cleanup, started)


def _nodes(nodes: nodes_cluster.Nodes, workdir: Path, cleanup: contextlib.ExitStack) -> None:
    roles = nodes_cluster.start_aws(nodes, cleanup)
    nodes_cluster.install(nodes, roles)
    nodes_guide.run(nodes, workdir)


def _standin(mode: str, workdir: Path, cleanup: contextlib.ExitStack, started: Started) -> None:
    place = standin_pods.choose(mode)
    show.say("The stand-in: the operator and one proxy per node run as local processes; no kubelet, so the demo")
    show.say("plays the scheduler and the kubelet for the guide's pod.")
    show.say(f"{place.mode}: {place.why}")
    cleanup.callback(_teardown, place)
    place.setup(workdir)
    if isinstance(place, standin_pods.NetnsPlace):
        show.say(f"network namespace {place.pod.netns}: veth {place.pod.host_if} ({place.node_address}, node-1) <-> "
                 f"{place.pod.pod_if} ({place.pod_ip}, the pod);")
        show.say(f"REJECT rule for 169.254.169.254 first in OUTPUT and FORWARD ({place.guard.comment}); "
                 "IP forwarding off.")
    started.standin = standin_cluster.start(place, workdir, cleanup)
    standin_guide.run(started.standin, place, workdir)


def _teardown(place: standin_pods.Place) -> None:
    problems = place.teardown()
    if problems:
        raise checks.DemoFailure("; ".join(problems))
    if isinstance(place, standin_pods.NetnsPlace):
        show.say("removed the network namespace, the veth pair, the PODIAM-PROXY chain "
                 "(python -m metadata_proxy --remove-iptables-rules) and the REJECT rules")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="modes:\n" + "\n".join(f"  {k:<9} {v}" for k, v in MODES.items()))
    parser.add_argument("--mode", choices=tuple(MODES), default="auto", help="see below (default: auto)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs) afterwards")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _interrupt)
    if args.keep:  # the real nodes' cluster folder too (localcluster/controlplane's switch)
        os.environ["PODIAM_KEEP_CONTROLPLANE"] = "1"
    workdir = Path(tempfile.mkdtemp(prefix="podiam-demo-"))
    cleanup = contextlib.ExitStack()
    started = Started()
    result = 0
    print("podiam demo: the Kiam guide's test chapter, on this machine (Ctrl-C stops and cleans up)", flush=True)
    fate = "kept at the end (--keep)" if args.keep else "removed at the end (--keep keeps it)"
    print(f"work folder (logs): {workdir}, {fate}", flush=True)
    try:
        _run(args.mode, workdir, cleanup, started)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything the demo started", flush=True)
        result = EXIT_INTERRUPTED
    except checks.DemoFailure as failure:
        show.fail(str(failure))
        print(started.logs(), flush=True)
        result = EXIT_FAILED
    except Exception:  # a crash is a failed demo too; show it and clean up
        traceback.print_exc()
        print(started.logs(), flush=True)
        result = EXIT_FAILED
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            show.step("Clean-up")
            cleanup.close()
            show.ok(started.stopped())
        except Exception as error:  # noqa: BLE001 - reported, and the run fails
            show.fail(f"clean-up: {error}")
            result = result or EXIT_FAILED
        finally:
            if args.keep:
                show.say(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
    if result == 0:
        print(f"\npodiam demo: every step behaved as the guide says ({show.elapsed():.1f}s)", flush=True)
    elif result == EXIT_FAILED:
        print(f"\npodiam demo: FAILED ({show.elapsed():.1f}s)", file=sys.stderr, flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
