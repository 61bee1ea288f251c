"""``kubectl-podiam`` (``kubectl podiam``): argument parsing and output."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
from typing import Any

from podiam_operator.cli import api, status, who, why


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG, then ~/.kube/config)")
    common.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    common.add_argument("-o", "--output", choices=["text", "json"], default="text", help="text for people, json for scripts")
    common.add_argument("--podiam-namespace", default=os.environ.get("PODIAM_NAMESPACE"),
                        help="namespace podiam runs in (default: PODIAM_NAMESPACE, else podiam-system, else found by listing)")
    parser = argparse.ArgumentParser(prog="kubectl podiam", description=__doc__, parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("why", parents=[common], help="does this pod get credentials, and if not, why")
    p.add_argument("pod")
    p.add_argument("-n", "--namespace", default=None, help="the pod's namespace (default: the context's, else default)")
    p = commands.add_parser("status", parents=[common], help="the installation at a glance")
    p.add_argument("--peering", default="podiam", help="the operator's ClusterKopfPeering (--peering-name)")
    p = commands.add_parser("who", parents=[common], help="which pods hold, or may hold, a role")
    p.add_argument("role", help="a role name (the operator's account) or ARN")
    return parser


async def _run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    now = datetime.datetime.now(datetime.timezone.utc)
    async with api.Api(args.kubeconfig, args.context) as client:
        if args.command == "why":
            namespace = args.namespace or client.default_namespace
            gathered = await why.gather(client, namespace, args.pod, args.podiam_namespace)
            if isinstance(gathered, api.Hidden):
                return {"error": gathered.text}, f"error: {gathered.text}", 1
            report = why.explain(gathered, now)
            return report, why.render(report), 0
        if args.command == "status":
            report = status.explain(await status.gather(client, args.podiam_namespace, args.peering), now)
            return report, status.render(report), 0
        report = who.explain(await who.gather(client, args.podiam_namespace), args.role)
        return report, who.render(report), 2 if report.get("error") else 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report, text, code = asyncio.run(_run(args))
    except Exception as error:  # a kubeconfig that does not load, an API server that does not answer
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report, indent=2, sort_keys=True) if args.output == "json" else text)
    sys.exit(code)


if __name__ == "__main__":
    main()
