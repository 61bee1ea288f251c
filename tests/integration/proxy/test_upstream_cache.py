"""Pods do not drive the node's real metadata service: allow-listed answers are cached, and the rate to it is bounded.

A real proxy in front of the node's metadata stand-in (``tests/support/node_imds.py``),
which lists every request it got.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.proxy.conftest import ProxyFactory
from tests.support import node_imds

pytestmark = pytest.mark.integration

REGION = "/latest/meta-data/placement/region"
PODS = [f"127.0.72.{i}" for i in range(1, 13)]
TTL = 2.0  # the default --upstream-cache-ttl
RATE, BURST = 10, 20  # the default --upstream-rate and --upstream-burst


@pytest.fixture
def imds(tmp_path: Path) -> Iterator[node_imds.NodeImds]:
    # Only placement/ paths are asked here: the stand-in never needs its STS endpoint.
    running = node_imds.NodeImds(tmp_path, sts_endpoint="http://127.0.0.1:9", role_arn="arn:aws:iam::123456789012:role/node",
                                 host="127.0.0.71").start()
    try:
        yield running
    finally:
        running.stop()


def gets(imds: node_imds.NodeImds, prefix: str) -> int:
    return sum(1 for request in imds.requests() if request["path"].startswith(prefix))


def test_a_burst_of_pods_asking_an_allowed_path_makes_one_upstream_request(start_proxy: ProxyFactory, imds: node_imds.NodeImds) -> None:
    proxy = start_proxy("--upstream", imds.url)
    with concurrent.futures.ThreadPoolExecutor(len(PODS)) as pool:
        answers = list(pool.map(lambda ip: proxy.imds_get(REGION, ip), PODS))
    assert [(a.status, a.text) for a in answers] == [(200, "us-east-1")] * len(PODS)
    assert gets(imds, REGION) == 1  # 12 pod requests, 1 upstream GET

    for ip in PODS:  # within the TTL: from the cache
        assert proxy.imds_get(REGION, ip).text == "us-east-1"
    assert gets(imds, REGION) == 1
    time.sleep(TTL + 0.2)
    assert proxy.imds_get(REGION, PODS[0]).text == "us-east-1"
    assert gets(imds, REGION) == 2  # expired: asked again


def test_the_upstream_request_rate_is_bounded_whatever_paths_pods_ask(start_proxy: ProxyFactory, imds: node_imds.NodeImds) -> None:
    # A broad allow-list: every path a pod asks is a new one, so no answer comes from the cache.
    proxy = start_proxy("--upstream", imds.url, "--allow-route", "/latest/meta-data/placement/.*")
    started = time.monotonic()
    statuses = [proxy.imds_get(f"/latest/meta-data/placement/p{i}", PODS[i % len(PODS)]).status for i in range(100)]
    elapsed = time.monotonic() - started
    asked = gets(imds, "/latest/meta-data/placement/p")
    assert asked <= BURST + RATE * elapsed + 1, (asked, elapsed)
    assert statuses.count(404) == asked  # what went upstream got the stand-in's answer
    assert statuses.count(429) == 100 - asked  # the rest: the proxy's own "slow down", as EC2's IMDS says it
    assert proxy.imds_get(REGION, PODS[0]).status in (200, 429)
