"""``python -m localcluster.controlplane build | up --dir DIR [--nodes N] | down --dir DIR | status --dir DIR | bump VERSION``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localcluster.controlplane import build, cluster, controlplane


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.controlplane", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the binaries if this version has none yet (cached outside the repo)")
    commands.add_parser("path", help="print the binaries' folder (building them first if needed)")
    bump = commands.add_parser("bump", help="pin another k8s.io/kubernetes release (go.mod's staging replaces follow)")
    bump.add_argument("version", help="e.g. v1.37.3")
    up = commands.add_parser("up", help="start etcd, kube-apiserver and kube-controller-manager; leave them running")
    up.add_argument("--dir", type=Path, required=True, help="where the kubeconfig, PKI, logs and etcd data go")
    up.add_argument("--timeout", type=float, default=60.0)
    up.add_argument("--nodes", type=int, default=0,
                    help="also kube-scheduler and N real nodes (kubelet + containerd in network namespaces; root)")
    up.add_argument("--sts-endpoint", help="with --nodes: moto's URL; each node's 169.254.169.254 serves the node role from it")
    down = commands.add_parser("down", help="stop the processes `up` started in DIR (and remove its nodes)")
    down.add_argument("--dir", type=Path, required=True)
    status = commands.add_parser("status", help="show what runs in DIR")
    status.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            path = build.ensure_built()
            print(path)
        elif args.command == "bump":
            modules = build.bump(args.version)
            print(f"pinned k8s.io/kubernetes {args.version} and {len(modules)} staging modules; "
                  f"`python -m localcluster.controlplane build` builds it", file=sys.stderr)
        elif args.command == "path":
            print(build.ensure_built().parent)
        elif args.command == "up" and args.nodes:
            started = cluster.Cluster.start(args.dir, nodes=args.nodes, sts_endpoint=args.sts_endpoint, detached=True)
            print(f"cluster with {args.nodes} nodes ready in {started.startup_seconds:.1f}s: {started.plane.server}",
                  file=sys.stderr)
            print(f"export KUBECONFIG={started.plane.kubeconfig}")
        elif args.command == "up":
            plane = controlplane.ControlPlane.start(args.dir, detached=True, timeout=args.timeout)
            print(f"control plane ready in {plane.startup_seconds:.1f}s: {plane.server}", file=sys.stderr)
            print(f"export KUBECONFIG={plane.kubeconfig}")
        elif args.command == "down":
            stopped = cluster.stop_directory(args.dir)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
        elif args.command == "status":
            state_file = args.dir / controlplane.STATE_FILE
            if not state_file.exists():
                print(f"nothing recorded in {args.dir}", file=sys.stderr)
                return 1
            plane = controlplane.ControlPlane.attach(args.dir)
            running = plane.running()
            print(json.dumps({"server": plane.server, "kubeconfig": str(plane.kubeconfig), "running": running}, indent=2))
            return 0 if running and all(running.values()) else 1
    except (build.BuildError, controlplane.ControlPlaneError, cluster.ClusterError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
