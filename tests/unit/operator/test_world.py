from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from podiam_operator._core import decide, facts, roles, world
from tests.unit.operator.conftest import binding, namespace, pod

pytestmark = pytest.mark.unit


def make() -> world.World:
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"))
    w.set_namespace(namespace("team", ".*"))
    return w


def test_per_node_desired_state_is_strict() -> None:
    w = make()
    a = pod(name="a", node="n1", ip="10.0.0.1", role="RoleA")
    b = pod(name="b", node="n2", ip="10.0.0.2", role="RoleB")
    delta = w.set_pod(a)
    assert delta.nodes == {"n1"} and len(delta.keys_used) == 1
    w.set_pod(b)
    n1, n2 = w.desired_for_node("n1"), w.desired_for_node("n2")
    assert set(n1.pods) == {a.uid} and set(n2.pods) == {b.uid}
    assert n1.keys.isdisjoint(n2.keys)
    assert w.desired_for_node("n3").pods == {}


def test_keys_go_out_when_scheduled_entries_when_ip_appears() -> None:
    w = make()
    unscheduled = pod(name="a", node=None, ip=None)
    delta = w.set_pod(unscheduled)
    assert delta.keys_used and not delta.nodes  # credentials can be fetched already
    scheduled = dataclasses.replace(unscheduled, node="n1")
    assert w.set_pod(scheduled).nodes == {"n1"}
    desired = w.desired_for_node("n1")
    assert desired.keys and not desired.pods
    with_ip = dataclasses.replace(scheduled, ip="10.0.0.9", phase="Running")
    assert w.set_pod(with_ip).nodes == {"n1"}
    assert w.desired_for_node("n1").pods[with_ip.uid].ip == "10.0.0.9"


@pytest.mark.parametrize("change", [{"deleting": True}, {"phase": "Succeeded"}, {"phase": "Failed"}, {"role": None}])
def test_revocation(change: dict[str, object]) -> None:
    w = make()
    p = pod(name="a", node="n1", ip="10.0.0.1")
    w.set_pod(p)
    delta = w.set_pod(dataclasses.replace(p, **change))  # type: ignore[arg-type]
    assert delta.nodes == {"n1"} and not w.used_keys()  # the key lost its last user
    assert w.desired_for_node("n1").pods == {} and not w.desired_for_node("n1").keys


def test_pod_deleted() -> None:
    w = make()
    p = pod(name="a", node="n1", ip="10.0.0.1")
    w.set_pod(p)
    assert w.delete_pod("team", "a").nodes == {"n1"}
    assert w.desired_for_node("n1").pods == {}


def test_namespace_regex_change_grants_and_revokes() -> None:
    w = make()
    p = pod(name="a", node="n1", ip="10.0.0.1", role="foo")
    w.set_pod(p)
    assert w.desired_for_node("n1").pods
    assert w.set_namespace(namespace("team", "bar")).nodes == {"n1"}
    assert not w.desired_for_node("n1").pods
    assert w.decisions[p.key].reason == "RoleNotPermitted"
    w.set_namespace(namespace("team", "foo"))
    assert w.desired_for_node("n1").pods


def test_one_key_for_many_pods() -> None:
    w = make()
    for i in range(50):
        w.set_pod(pod(name=f"p{i}", node=f"n{i % 5}", ip=f"10.0.0.{i + 1}"))
    assert len(w.used_keys()) == 1
    (key,) = w.used_keys()
    assert w.nodes_using(key) == {f"n{i}" for i in range(5)}


def test_user_binding_and_conflict() -> None:
    w = make()
    p = pod(name="a", node="n1", ip="10.0.0.1", role=None, labels={"app": "web"})
    w.set_pod(p)
    assert not w.desired_for_node("n1").pods
    user = binding(name="web", role="WebRole", selector={"matchLabels": {"app": "web"}})
    delta = w.set_binding(user)
    assert delta.nodes == {"n1"} and ("team", "web") in delta.bindings
    assert w.desired_for_node("n1").pods
    other = binding(name="other", role="OtherRole", selector={"matchExpressions": [{"key": "app", "operator": "Exists"}]})
    w.set_binding(other)
    assert not w.desired_for_node("n1").pods
    assert w.decisions[p.key].outcome == "conflict"
    assert [d.outcome for _, d in w.binding_decisions(("team", "web"))] == ["conflict"]
    assert [d.outcome for _, d in w.binding_decisions(("team", "other"))] == ["conflict"]
    w.delete_binding("team", "other")
    assert w.desired_for_node("n1").pods
    w.delete_binding("team", "web")
    assert not w.desired_for_node("n1").pods


def test_pod_owned_binding_objects_do_not_change_decisions() -> None:
    w = make()
    p = pod(name="a", node="n1", ip="10.0.0.1")
    w.set_pod(p)
    before = w.desired_for_node("n1")
    owned = binding(name="a", role="MyRole", owner=p)
    assert w.set_binding(owned).nodes == set()
    assert w.desired_for_node("n1") == before
    assert w.owned_binding_for(p) == owned
    assert w.binding_decisions(("team", "a"))[0][1].outcome == "granted"


def test_duplicate_ip_serves_neither() -> None:
    w = make()
    w.set_pod(pod(name="a", node="n1", ip="10.0.0.1"))
    w.set_pod(pod(name="b", node="n1", ip="10.0.0.1"))
    assert w.desired_for_node("n1").pods == {}


def test_recreated_pod_with_same_name() -> None:
    w = make()
    old = pod(name="a", node="n1", ip="10.0.0.1")
    w.set_pod(old)
    new = pod(name="a", node="n2", ip="10.0.0.2")
    delta = w.set_pod(new)
    assert {"n1", "n2"} <= delta.nodes
    assert w.desired_for_node("n1").pods == {}
    assert set(w.desired_for_node("n2").pods) == {new.uid}


def test_base_arrives_later() -> None:
    w = world.World(decide.Config(), None)
    w.set_namespace(namespace("team", ".*"))
    p = pod(name="a", node="n1", ip="10.0.0.1", role="MyRole")
    w.set_pod(p)
    assert w.decisions[p.key].outcome == "error"
    w.set_base(roles.BaseArn("aws", "123456789012"))
    assert w.decisions[p.key].outcome == "granted"


@pytest.mark.parametrize("rival", ["no role", "denied", "host network elsewhere"])
def test_a_role_less_pod_claiming_a_granted_pods_ip_stops_serving_it(rival: str) -> None:
    # Found by tests/fault/test_ip_reuse.py: pod A (role) still Running at an IP
    # in the API when pod B without a role reports the same IP on the same node.
    w = make()
    w.set_namespace(namespace("locked", None))
    a = pod(name="a", node="n1", ip="10.0.0.1", role="RoleA")
    w.set_pod(a)
    assert set(w.desired_for_node("n1").pods) == {a.uid}
    if rival == "no role":
        b = pod(name="b", node="n1", ip="10.0.0.1", role=None)
    elif rival == "denied":
        b = pod(name="b", namespace="locked", node="n1", ip="10.0.0.1", role="RoleA")
    else:
        b = pod(name="b", node="n2", ip="10.0.0.1", role=None, host_network=True)
    delta = w.set_pod(b)
    if rival == "host network elsewhere":
        assert set(w.desired_for_node("n1").pods) == {a.uid}
        return
    assert "n1" in delta.nodes
    assert w.desired_for_node("n1").pods == {}
    # A's end (finished, or gone) gives the IP to B alone; B has no role here.
    delta = w.set_pod(dataclasses.replace(a, phase="Succeeded"))
    assert w.desired_for_node("n1").pods == {}
    w.delete_pod("team", "a")
    assert w.desired_for_node("n1").pods == {}
    assert not w.ip_claims.get(("n1", "10.0.0.1"), set()) - {b.key}


def test_a_rival_claim_that_goes_away_restores_the_granted_pod() -> None:
    w = make()
    a = pod(name="a", node="n1", ip="10.0.0.1", role="RoleA")
    w.set_pod(a)
    w.set_pod(pod(name="b", node="n1", ip="10.0.0.1", role=None))
    assert w.desired_for_node("n1").pods == {}
    delta = w.delete_pod("team", "b")
    assert "n1" in delta.nodes
    assert set(w.desired_for_node("n1").pods) == {a.uid}


def test_an_ip_conflict_is_reported_on_the_granted_pods_and_their_bindings() -> None:
    w = make()
    w.set_binding(binding(name="web", role="WebRole", selector={"matchLabels": {"app": "web"}}))
    a = pod(name="a", node="n1", ip="10.0.0.1", labels={"app": "web"}, role=None)
    w.set_pod(a)
    assert w.ip_conflict(a.key) is None
    delta = w.set_pod(pod(name="b", node="n1", ip="10.0.0.1", role=None))
    assert ("team", "a") in delta.pods and ("team", "web") in delta.bindings
    why = w.ip_conflict(a.key)
    assert why is not None and "10.0.0.1" in why and "team/b" in why and "node n1" in why
    assert w.ip_conflict(("team", "b")) is not None  # b is not served either (it has no role to serve)
    # The same IP on another node is another pod.
    w.set_pod(pod(name="c", node="n2", ip="10.0.0.1", role="RoleC"))
    assert w.ip_conflict(("team", "c")) is None
    delta = w.delete_pod("team", "b")
    assert ("team", "a") in delta.pods and ("team", "web") in delta.bindings
    assert w.ip_conflict(a.key) is None


# -- the operator's own pods: node-identity entries --------------------------------------

OWN = world.OwnPods("podiam-system", "podiam-operator")


def operator_pod(name: str = "op-1", **kwargs: Any) -> facts.PodFacts:
    values: dict[str, Any] = {"namespace": "podiam-system", "service_account": "podiam-operator", "role": None,
                              "node": "n1", "ip": "10.0.0.50"}
    return pod(name=name, **(values | kwargs))


def test_the_operators_own_pods_get_node_identity_entries_on_their_node_only() -> None:
    w = world.World(decide.Config(), None, OWN)  # no base yet: own entries need none
    me = operator_pod()
    assert w.set_pod(me).nodes == {"n1"}
    plan = w.desired_for_node("n1").pods[me.uid]
    assert plan.node_identity and plan.key is None and plan.ip == "10.0.0.50"
    assert w.desired_for_node("n1").keys == frozenset() and w.desired_for_node("n2").pods == {}
    standby = operator_pod("op-2", node="n2", ip="10.0.0.60")
    assert w.set_pod(standby).nodes == {"n2"}
    assert w.desired_for_node("n2").pods[standby.uid].node_identity


@pytest.mark.parametrize("other", [
    {"namespace": "team"},  # the operator's ServiceAccount name in another namespace
    {"service_account": "default"},  # another ServiceAccount in the operator's namespace
    {"host_network": True},  # reads the node's metadata service directly, and shares the node's IP
    {"mirror": True},  # a static pod: its node's kubelet picks its namespace and ServiceAccount
])
def test_only_the_operators_namespace_and_service_account_count_labels_do_not(other: dict[str, Any]) -> None:
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"), OWN)
    impostor = operator_pod(labels={"app.kubernetes.io/name": "podiam-operator"}, **other)
    w.set_pod(impostor)
    assert w.desired_for_node("n1").pods == {}


def test_without_own_pods_configured_nothing_gets_the_node_identity() -> None:
    w = world.World(decide.Config(), None)
    w.set_pod(operator_pod())
    assert w.desired_for_node("n1").pods == {}


@pytest.mark.parametrize("change", [{"deleting": True}, {"phase": "Succeeded"}, {"phase": "Failed"}])
def test_an_own_pod_is_revoked_when_it_terminates(change: dict[str, Any]) -> None:
    w = world.World(decide.Config(), None, OWN)
    me = operator_pod()
    w.set_pod(me)
    assert w.set_pod(dataclasses.replace(me, **change)).nodes == {"n1"}
    assert w.desired_for_node("n1").pods == {}


def test_an_own_pods_ip_change_and_deletion_reach_its_node() -> None:
    w = world.World(decide.Config(), None, OWN)
    me = operator_pod(ip=None)
    w.set_pod(me)
    assert w.desired_for_node("n1").pods == {}
    assert w.set_pod(dataclasses.replace(me, ip="10.0.0.51")).nodes == {"n1"}
    assert w.delete_pod("podiam-system", "op-1").nodes == {"n1"}
    assert w.desired_for_node("n1").pods == {}


def test_an_ip_claimed_by_another_live_pod_serves_neither_the_node_identity_nor_anything() -> None:
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"), OWN)
    w.set_namespace(namespace("team", ".*"))
    me = operator_pod(ip="10.0.0.70")
    w.set_pod(me)
    stale = pod(name="old", node="n1", ip="10.0.0.70", role=None)  # a stale pod still claims the IP
    assert w.set_pod(stale).nodes == {"n1"}
    assert w.desired_for_node("n1").pods == {}
    w.delete_pod("team", "old")
    assert set(w.desired_for_node("n1").pods) == {me.uid}


def test_a_role_annotation_on_an_own_pod_does_not_replace_the_node_identity() -> None:
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"), OWN)
    w.set_namespace(namespace("podiam-system", ".*"))
    me = operator_pod(role="SomeRole")
    w.set_pod(me)
    desired = w.desired_for_node("n1")
    assert desired.pods[me.uid].node_identity
