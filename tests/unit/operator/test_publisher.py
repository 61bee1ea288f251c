"""The status ConfigMap's document: compact per proxy, and within a ConfigMap's 1 MiB at 5,000+ nodes."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from podiam_operator._core import facts, published, world
from podiam_operator._engine import publisher
from podiam_operator._kits import push

pytestmark = pytest.mark.unit


class _Core:
    def __init__(self) -> None:
        self.written: list[Any] = []

    async def replace_namespaced_config_map(self, name: str, namespace: str, body: Any) -> None:
        self.written.append(body)


def _publisher(nodes: int, troubled: set[int]) -> tuple[publisher.Publisher, _Core]:
    model = world.World(config=None, base=None)  # type: ignore[arg-type]
    states = {}
    for i in range(nodes):
        node = f"ip-10-0-{i // 250}-{i % 250}.eu-west-1.compute.internal"
        model.proxies[node] = facts.ProxyFacts(node=node, pod_name=f"podiam-proxy-{i:05d}", pod_uid=f"u{i}", host_ip="10.0.0.1",
                                               running=True, ready=True, restarts=0)
        states[node] = push.ProxyState(node=node, known=True, synced=i not in troubled, generation=1, entries=30,
                                       token_only=0, roles=20, last_push=1.7e9, last_contact=1.7e9,
                                       last_error="handshake failed" if i in troubled else None)
    engine = types.SimpleNamespace(world=model, proxy_states=lambda: states, tainted=frozenset(), phase="active",
                                   caller_arn=None, identity_error=None, cache=None)
    core = _Core()
    made = publisher.Publisher(engine, types.SimpleNamespace(core=core), namespace="podiam", name="podiam-status",  # type: ignore[arg-type]
                               identity="op", decisions={}, node_taint="t", tls_status=lambda: (True, "ok"),
                               client_cert=Path("/nonexistent"), ca_file=Path("/nonexistent"))
    return made, core


async def test_each_proxy_gets_only_what_is_not_the_default() -> None:
    made, core = _publisher(3, troubled={1})
    await made.publish_once()
    document = json.loads(core.written[-1].data[published.KEY])
    entries = list(document["proxies"].values())
    assert entries[0] == {"synced": True, "pod": "podiam-proxy-00000", "pods": 30, "roles": 20, "lastPush": "2023-11-14T22:13:20Z"}
    assert entries[1]["synced"] is False and entries[1]["lastError"] == "handshake failed"
    assert "proxiesOmitted" not in document


async def test_past_900_kib_only_the_proxies_that_need_a_look_are_listed() -> None:
    made, core = _publisher(9000, troubled={7, 4000})
    await made.publish_once()
    text = core.written[-1].data[published.KEY]
    assert len(text) < publisher.MAX_DOCUMENT
    document = json.loads(text)
    assert sorted(document["proxies"]) == ["ip-10-0-0-7.eu-west-1.compute.internal", "ip-10-0-16-0.eu-west-1.compute.internal"]
    assert document["proxiesOmitted"] == 8998
