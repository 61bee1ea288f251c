"""``python -m demo [--mode auto|netns|loopback] [--keep]``: run the demo; exit 0 only if every step behaved."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from types import FrameType

from demo import checks, cluster, guide, pods, show

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _logs(started: cluster.Cluster | None) -> None:
    if started is None:
        return
    processes = [*started.stack.operators, *(n.proxy.process for n in started.stack.nodes)]
    for process in processes:
        tail = process.log().strip().splitlines()[-15:]
        if tail:
            print(f"--- {process.name} (last lines of {process.log_path}) ---", flush=True)
            print("\n".join(tail), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--mode", choices=("auto", "netns", "loopback"), default="auto",
                        help="auto (default): netns when root with iptables, else loopback")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) afterwards")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="podiam-demo-"))
    cleanup = contextlib.ExitStack()
    started: cluster.Cluster | None = None
    result = 0
    print("podiam demo: the Kiam guide's test chapter, on this machine (Ctrl-C stops and cleans up)", flush=True)
    fate = "kept at the end (--keep)" if args.keep else "removed at the end (--keep keeps it)"
    print(f"work folder (logs): {workdir}, {fate}", flush=True)
    try:
        show.step("Mode")
        place = pods.choose(args.mode)
        show.say(f"{place.mode}: {place.why}")
        cleanup.callback(_teardown, place)
        place.setup(workdir)
        if isinstance(place, pods.NetnsPlace):
            show.say(f"network namespace {place.pod.netns}: veth {place.pod.host_if} ({place.node_address}, node-1) <-> "
                     f"{place.pod.pod_if} ({place.pod_ip}, the pod);")
            show.say(f"REJECT rule for 169.254.169.254 first in OUTPUT and FORWARD ({place.guard.comment}); "
                     "IP forwarding off.")
        started = cluster.start(place, workdir, cleanup)
        guide.run(started, place, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything the demo started", flush=True)
        result = EXIT_INTERRUPTED
    except checks.DemoFailure as failure:
        show.fail(str(failure))
        _logs(started)
        result = EXIT_FAILED
    except Exception:  # a crash is a failed demo too; show it and clean up
        traceback.print_exc()
        _logs(started)
        result = EXIT_FAILED
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            show.step("Clean-up")
            cleanup.close()
            show.ok("stopped everything the demo started" if started is None
                    else "stopped the operator, the proxies, moto and the control plane")
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


def _teardown(place: pods.Place) -> None:
    problems = place.teardown()
    if problems:
        raise checks.DemoFailure("; ".join(problems))
    if isinstance(place, pods.NetnsPlace):
        show.say("removed the network namespace, the veth pair, the PODIAM-PROXY chain "
                 "(python -m metadata_proxy --remove-iptables-rules) and the REJECT rules")


if __name__ == "__main__":
    sys.exit(main())
