"""A node's own EC2 metadata service on loopback: the upstream a proxy forwards allow-listed and node-identity paths to.

Run as ``python -m tests.support.node_imds --port P --sts-endpoint URL --role-arn ARN``
(:class:`NodeImds` starts it as a real process). It serves what botocore's
instance-metadata provider reads, IMDSv2 tokens included, with the node
role's credentials assumed from moto's STS (through the front, so tests can
tell which keys belong to the node role), and the availability zone and
region. ``GET /_imds/requests`` lists what was asked (source, path, status,
whether credentials were in the answer), so a test can show who ever
received the node's credentials. Loopback only: tests never reach a real
169.254.169.254.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from localcluster import ports, processes

CREDENTIALS = "/latest/meta-data/iam/security-credentials/"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
REQUESTS = web.AppKey("requests", list[dict[str, Any]])


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_app(role_arn: str, sts_endpoint: str, region: str) -> web.Application:
    import boto3

    role_name = role_arn.rsplit("/", 1)[-1]
    # moto accepts any long-term keys: these stand for the instance's own bootstrap identity.
    client = boto3.client("sts", endpoint_url=sts_endpoint, region_name=region,
                          aws_access_key_id="AKIANODEBOOTSTRAP000", aws_secret_access_key="node-bootstrap")
    tokens: set[str] = set()
    cached: dict[str, Any] = {}
    lock = asyncio.Lock()

    async def credentials() -> dict[str, Any]:
        async with lock:
            now = datetime.datetime.now(datetime.timezone.utc)
            if not cached or cached["Expiration"] - now < datetime.timedelta(minutes=15):
                answer = await asyncio.to_thread(client.assume_role, RoleArn=role_arn, RoleSessionName="i-0node", DurationSeconds=3600)
                cached.clear()
                cached.update(answer["Credentials"], LastUpdated=now)
            return cached

    async def token(request: web.Request) -> web.Response:
        value = secrets.token_urlsafe(24)
        tokens.add(value)
        return web.Response(text=value, headers={TTL_HEADER: request.headers.get(TTL_HEADER, "21600")})

    async def get(request: web.Request) -> web.Response:
        status, body, served = 404, "", False
        if request.headers.get(TOKEN_HEADER) not in tokens:
            status = 401
        elif request.path == CREDENTIALS:
            status, body = 200, role_name
        elif request.path == CREDENTIALS + role_name:
            found = await credentials()
            status, served = 200, True
            body = json.dumps({"Code": "Success", "LastUpdated": _iso(found["LastUpdated"]), "Type": "AWS-HMAC",
                               "AccessKeyId": found["AccessKeyId"], "SecretAccessKey": found["SecretAccessKey"],
                               "Token": found["SessionToken"], "Expiration": _iso(found["Expiration"])}, indent=2)
        elif request.path == "/latest/meta-data/iam/info":
            status, body = 200, json.dumps({"Code": "Success", "InstanceProfileArn": role_arn.replace(":role/", ":instance-profile/"),
                                            "InstanceProfileId": "AIPANODEPROFILE0000"})
        elif request.path == "/latest/meta-data/placement/region":
            status, body = 200, region
        elif request.path == "/latest/meta-data/placement/availability-zone":
            status, body = 200, region + "a"
        request.app[REQUESTS].append({"source": request.remote, "path": request.path, "status": status, "credentials": served})
        return web.Response(status=status, text=body)

    async def requests(request: web.Request) -> web.Response:
        return web.json_response(request.app[REQUESTS])

    app = web.Application()
    app[REQUESTS] = []
    app.router.add_put("/latest/api/token", token)
    app.router.add_get("/_imds/requests", requests)
    app.router.add_get("/{tail:.*}", get)
    return app


class NodeImds:
    """The stand-in as a real process on ``host``; ``url`` is what a proxy's ``--upstream`` takes."""

    def __init__(self, workdir: Path, *, sts_endpoint: str, role_arn: str, host: str = "127.0.0.1", region: str = "us-east-1") -> None:
        self.port = ports.free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.role_arn = role_arn
        self.process = processes.ManagedProcess(
            "node-imds",
            [sys.executable, "-m", "tests.support.node_imds", "--host", host, "--port", str(self.port),
             "--sts-endpoint", sts_endpoint, "--role-arn", role_arn, "--region", region],
            workdir / f"node-imds-{self.port}.log",
        )

    def start(self) -> NodeImds:
        self.process.start()
        self.process.wait_http(f"{self.url}/_imds/requests", timeout=30)
        return self

    def stop(self) -> None:
        self.process.stop()

    def requests(self) -> list[dict[str, Any]]:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/_imds/requests", timeout=5) as response:
            return list(json.load(response))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sts-endpoint", required=True)
    parser.add_argument("--role-arn", required=True)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    if not args.host.startswith("127."):
        sys.exit("node_imds: loopback addresses only")
    web.run_app(make_app(args.role_arn, args.sts_endpoint, args.region), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
