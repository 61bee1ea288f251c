"""The operator's side of the container-credentials path: hostNetwork pods as token-only entries, keys in every push."""

from __future__ import annotations

import dataclasses

import pytest

from metadata_proxy import wire
from podiam_operator._core import decide, roles, world
from podiam_operator._kits import push
from tests.unit.operator.conftest import namespace, pod, service_account
from tests.unit.operator.test_push_pending import Node, Proxy, credentials, step, synced

pytestmark = pytest.mark.unit

BASE = roles.BaseArn("aws", "123456789012")
ON = decide.Config(container_credentials=True)


def make(config: decide.Config = ON) -> world.World:
    w = world.World(config, BASE)
    w.set_namespace(namespace("team", ".*", default_role="DefaultRole"))
    return w


# -- decisions and the world ------------------------------------------------------------------------------


def test_a_host_network_pod_naming_a_role_is_granted_token_only() -> None:
    w = make()
    host = pod(name="agent", node="n1", ip="192.168.0.10", role="AgentRole", host_network=True)
    assert w.set_pod(host).nodes == {"n1"}
    desired = w.desired_for_node("n1")
    assert desired.pods == {}  # never by IP: the node's IP is every host-network pod's
    assert desired.token_only == {host.uid: world.TokenOnlyPlan(host.uid, "team", "agent", desired.token_only[host.uid].key)}
    assert desired.keys == {desired.token_only[host.uid].key}
    assert "container-credentials path only" in (decide.token_only(host, ON) or "")
    # Before its IP is known too: the token names it, not its address.
    w2 = make()
    w2.set_pod(dataclasses.replace(host, ip=None))
    assert set(w2.desired_for_node("n1").token_only) == {host.uid}
    # Gone when it goes.
    assert w.delete_pod("team", "agent").nodes == {"n1"} and w.desired_for_node("n1").token_only == {}


def test_by_service_account_too_but_never_by_default() -> None:
    account = service_account(role="SaRole")
    host = pod(role=None, host_network=True)
    granted = decide.decide_pod(host, namespace(), [], BASE, dataclasses.replace(ON, irsa=True), account)
    assert granted.outcome == "granted" and granted.grant is not None and granted.grant.role.name == "SaRole"
    # A namespace's default role does not reach node agents on the host network by surprise.
    defaulted = decide.decide_pod(host, namespace(default_role="DefaultRole"), [], BASE, ON)
    assert defaulted.outcome == "none"


def test_without_the_container_credentials_path_host_network_pods_are_refused_as_before() -> None:
    decision = decide.decide_pod(pod(host_network=True), namespace(), [], BASE, decide.Config())
    assert (decision.outcome, decision.reason) == ("denied", "HostNetwork")
    assert decide.token_only(pod(host_network=True), decide.Config()) is None
    # Mirror pods stay refused whatever the path.
    mirror = decide.decide_pod(pod(host_network=True, mirror=True), namespace(), [], BASE, ON)
    assert mirror.reason == "MirrorPod"


# -- pushes -------------------------------------------------------------------------------------------------


class HostNode(Node):
    def __init__(self) -> None:
        super().__init__()
        self.token_only: dict[str, world.TokenOnlyPlan] = {}

    def desired(self, node: str) -> world.NodeDesired:
        base = super().desired(node)
        keys = base.keys | {plan.key for plan in self.token_only.values()}
        return world.NodeDesired(pods=base.pods, keys=frozenset(keys), token_only=dict(self.token_only))


def jwks(kid: str) -> wire.ServiceAccountKeys:
    return wire.ServiceAccountKeys(issuer="https://issuer", keys=[{"kty": "EC", "kid": kid, "crv": "P-256", "x": "x", "y": "y"}])


class Keys:
    def __init__(self) -> None:
        self.current: wire.ServiceAccountKeys | None = None

    def __call__(self) -> wire.ServiceAccountKeys | None:
        return self.current


def worker() -> tuple[HostNode, Proxy, Keys, push.NodeWorker]:
    from podiam_operator._core import facts

    node, proxy, keys = HostNode(), Proxy(), Keys()
    made = push.NodeWorker("n1", proxy, node.desired, credentials, synced, port=8182, anti_entropy=3600,  # type: ignore[arg-type]
                           keys=keys)
    made.set_proxy(facts.ProxyFacts("n1", "p", "u", "127.0.0.10", True, False, 0))
    return node, proxy, keys, made


async def test_token_only_entries_and_keys_in_snapshots_and_changes() -> None:
    node, proxy, keys, made = worker()
    keys.current = jwks("k1")
    node.token_only["uid-h"] = world.TokenOnlyPlan("uid-h", "team", "agent", "RoleA")
    body = await step(made)
    assert body["token_only"] == [{"uid": "uid-h", "namespace": "team", "name": "agent", "role_key": "RoleA"}]
    assert body["service_account_keys"]["keys"][0]["kid"] == "k1"
    assert [r["key"] for r in body["roles"]] == ["RoleA"]
    requests = len(proxy.requests)
    await step(made)
    assert len(proxy.requests) == requests  # nothing new: nothing sent
    # The API server rotated its key: the next push carries the new keys, and only them.
    keys.current = jwks("k2")
    body = await step(made)
    assert body["service_account_keys"]["keys"][0]["kid"] == "k2" and set(body) == {"upsert_roles", "remove_roles",
                                                                                     "upsert_pods", "remove_pods",
                                                                                     "service_account_keys"}
    # The pod goes: withdrawn with its role.
    del node.token_only["uid-h"]
    body = await step(made)
    assert body["remove_token_only"] == ["uid-h"] and body["remove_roles"] == ["RoleA"]
    assert "service_account_keys" not in body


async def test_keys_unknown_yet_are_left_out_and_a_proxy_holding_other_keys_is_resynced() -> None:
    node, proxy, keys, made = worker()
    body = await step(made)
    assert "service_account_keys" not in body  # an older proxy reads it, and the proxy keeps what it holds
    keys.current = jwks("k1")
    await step(made)
    fingerprint = keys.current.fingerprint()
    proxy.status = wire.ProxyStatus(node_name="n1", ready=True, snapshot_generation=made.generation, roles=0, pods=0,
                                    service_account_keys=fingerprint)
    await made._check()
    assert not made.need_snapshot
    proxy.status = wire.ProxyStatus(node_name="n1", ready=True, snapshot_generation=made.generation, roles=0, pods=0,
                                    service_account_keys="something-else")
    await made._check()
    assert made.need_snapshot
