"""The STS region: configured, else the node's metadata (placement/region, through its proxy in a cluster), else
us-east-1 with a log line; and the endpoint URL botocore then uses (no endpointUrl pinned). Nothing leaves the
machine: the metadata service is a stand-in on loopback, or disabled, and no call is made on the clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from podiam_operator._kits import sts

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never a real 169.254.169.254
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")


async def endpoint(region: str | None) -> str:
    async with sts.AioBotocoreSource(region=region, endpoint_url=None, timeout=1) as source:
        async with source._caller() as client:
            return str(client.meta.endpoint_url)


@pytest.mark.parametrize(("region", "url"), [
    ("eu-west-3", "https://sts.eu-west-3.amazonaws.com"),
    ("ap-northeast-2", "https://sts.ap-northeast-2.amazonaws.com"),  # the guide's Seoul
    ("us-east-1", "https://sts.us-east-1.amazonaws.com"),  # regional, never the global sts.amazonaws.com
    ("cn-north-1", "https://sts.cn-north-1.amazonaws.com.cn"),
    ("us-gov-west-1", "https://sts.us-gov-west-1.amazonaws.com"),
])
async def test_a_region_selects_its_regional_endpoint(region: str, url: str) -> None:
    assert await endpoint(region) == url


@pytest.fixture
async def node_metadata(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    """The node's metadata service, IMDSv2 as a proxy forwards it: a token, then placement/region."""
    asked: list[str] = []

    async def token(request: web.Request) -> web.Response:
        return web.Response(text="token-1")

    async def region(request: web.Request) -> web.Response:
        asked.append(request.path)
        assert request.headers.get("X-aws-ec2-metadata-token") == "token-1"
        return web.Response(text="ap-northeast-2")

    app = web.Application()
    app.router.add_put("/latest/api/token", token)
    app.router.add_get("/latest/meta-data/placement/region", region)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", str(server.make_url("/")))
    try:
        yield asked
    finally:
        await server.close()


async def test_without_a_configured_region_the_nodes_metadata_says(node_metadata: list[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="podiam_operator._kits.sts")
    assert await endpoint(None) == "https://sts.ap-northeast-2.amazonaws.com"
    assert node_metadata == ["/latest/meta-data/placement/region"]  # the path on the proxy's allow-list
    assert "STS region ap-northeast-2, from the node's metadata" in caplog.text


async def test_a_configured_region_asks_no_metadata(node_metadata: list[str]) -> None:
    assert await endpoint("eu-west-3") == "https://sts.eu-west-3.amazonaws.com"
    assert node_metadata == []


async def test_no_region_anywhere_is_us_east_1_and_said(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="podiam_operator._kits.sts")
    assert await endpoint(None) == "https://sts.us-east-1.amazonaws.com"
    assert "no STS region" in caplog.text and "using us-east-1" in caplog.text
