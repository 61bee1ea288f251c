"""A node's own EC2 instance metadata service, for the local cluster's nodes.

    python -m localcluster.controlplane.node_metadata --netns /var/run/netns/NODE --node-ip IP \\
        --role-arn arn:aws:iam::123456789012:role/NODE-ROLE --sts-endpoint http://127.0.0.1:PORT \\
        --record FILE

On EKS, a node's 169.254.169.254 is the instance metadata service, with the
node role's credentials: what host-network pods (the proxy's allow-listed
upstream, a host-network operator) read, and what podiam must keep every
other pod from reading. This stand-in listens on 169.254.169.254:80 inside the
node's network namespace only (the address is on that namespace's loopback)
and serves the node role's credentials, assumed from moto's STS.

Every request is appended to ``--record`` as a JSON line (source address,
method, path, status, and whether credentials were in the answer), so a test
can show which callers ever received the node's credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from aiohttp import web

from localcluster.controlplane import netns_socket

_TOKEN_HEADER = "X-aws-ec2-metadata-token"
_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
_REFRESH_BEFORE = datetime.timedelta(minutes=15)


class NodeIdentity:
    """The node role's credentials, assumed from STS and kept until 15 minutes before they expire."""

    def __init__(self, role_arn: str, sts_endpoint: str, session_name: str, region: str) -> None:
        self.role_arn = role_arn
        self.role_name = role_arn.rsplit("/", 1)[-1]
        self._sts = boto3.client(
            "sts", endpoint_url=sts_endpoint, region_name=region,
            # moto accepts any long-term keys; these stand for the instance's own bootstrap identity.
            aws_access_key_id="AKIANODEBOOTSTRAP000", aws_secret_access_key="node-bootstrap",
        )
        self._session_name = session_name
        self._credentials: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    async def credentials(self) -> dict[str, Any]:
        async with self._lock:
            now = datetime.datetime.now(datetime.timezone.utc)
            if self._credentials is None or self._credentials["Expiration"] - now < _REFRESH_BEFORE:
                answer = await asyncio.to_thread(
                    self._sts.assume_role, RoleArn=self.role_arn, RoleSessionName=self._session_name, DurationSeconds=3600)
                self._credentials = dict(answer["Credentials"])
                self._credentials["LastUpdated"] = now
            return self._credentials


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_app(identity: NodeIdentity, node_ip: str, node_name: str, region: str, record: Path) -> web.Application:
    tokens: dict[str, float] = {}
    zone = f"{region}a"

    def log(request: web.Request, status: int, credentials: bool) -> None:
        entry = {"time": time.time(), "source": request.remote, "method": request.method, "path": request.path,
                 "status": status, "credentials": credentials}
        with record.open("a") as out:
            out.write(json.dumps(entry) + "\n")

    async def token(request: web.Request) -> web.Response:
        try:
            ttl = int(request.headers.get(_TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            log(request, 400, False)
            return web.Response(status=400, text="invalid TTL")
        value = secrets.token_urlsafe(32)
        tokens[value] = time.monotonic() + ttl
        log(request, 200, False)
        return web.Response(text=value, headers={_TTL_HEADER: str(ttl)})

    async def metadata(request: web.Request) -> web.Response:
        presented = request.headers.get(_TOKEN_HEADER)
        if presented is not None and tokens.get(presented, 0) < time.monotonic():
            log(request, 401, False)
            return web.Response(status=401)
        path = request.match_info["path"]
        credentials = False
        body: str | None
        if path == "meta-data/iam/security-credentials/":
            body = identity.role_name
        elif path == f"meta-data/iam/security-credentials/{identity.role_name}":
            creds = await identity.credentials()
            body = json.dumps({
                "Code": "Success", "LastUpdated": _iso(creds["LastUpdated"]), "Type": "AWS-HMAC",
                "AccessKeyId": creds["AccessKeyId"], "SecretAccessKey": creds["SecretAccessKey"],
                "Token": creds["SessionToken"], "Expiration": _iso(creds["Expiration"]),
            }, indent=2)
            credentials = True
        elif path == "meta-data/iam/info":
            account = identity.role_arn.split(":")[4]
            body = json.dumps({"Code": "Success", "LastUpdated": _iso(datetime.datetime.now(datetime.timezone.utc)),
                               "InstanceProfileArn": f"arn:aws:iam::{account}:instance-profile/{identity.role_name}",
                               "InstanceProfileId": "AIPANODEPROFILE00000"})
        else:
            body = {
                "meta-data/placement/availability-zone": zone,
                "meta-data/placement/region": region,
                "meta-data/instance-id": f"i-{node_name}",
                "meta-data/local-ipv4": node_ip,
                "meta-data/hostname": node_name,
                "dynamic/instance-identity/document": json.dumps(
                    {"region": region, "availabilityZone": zone, "instanceId": f"i-{node_name}", "privateIp": node_ip}),
            }.get(path)
        status = 404 if body is None else 200
        log(request, status, credentials)
        return web.Response(status=status, text=body if body is not None else "Not Found")

    app = web.Application()
    app.router.add_put("/latest/api/token", token)
    app.router.add_get("/latest/{path:.*}", metadata)
    return app


async def serve(args: argparse.Namespace) -> None:
    identity = NodeIdentity(args.role_arn, args.sts_endpoint, f"i-{args.node_name}", args.region)
    app = make_app(identity, args.node_ip, args.node_name, args.region, args.record)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    sock = netns_socket.listen_in(args.netns, args.listen, 80)
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"node metadata service for {args.node_name} on {args.listen}:80 in {args.netns}: role {args.role_arn}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.controlplane.node_metadata", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--netns", type=Path, required=True)
    parser.add_argument("--listen", default="169.254.169.254")
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--node-ip", required=True)
    parser.add_argument("--role-arn", required=True)
    parser.add_argument("--sts-endpoint", required=True, help="moto's STS, on the root namespace's loopback")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--record", type=Path, required=True)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
