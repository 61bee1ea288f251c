"""The world model with the new role sources: each change that takes a role away revokes at once (the node's desired
state loses the pod's entry, the key its last user), and an IP claimed twice is served to nobody whatever the source."""

from __future__ import annotations

import dataclasses

import pytest

from podiam_operator._core import decide, policy, roles, world
from tests.unit.operator.conftest import binding, namespace, pod, service_account

pytestmark = pytest.mark.unit
OWN = "arn:aws:iam::123456789012:role/"


def make(config: decide.Config = decide.Config(irsa=True), permitted: str | None = ".*", **ns: str) -> world.World:
    w = world.World(config, roles.BaseArn("aws", "123456789012"))
    w.set_namespace(namespace("team", permitted, **ns))  # type: ignore[arg-type]
    return w


def served(w: world.World, node: str = "node-1") -> set[str]:
    return {plan.name for plan in w.desired_for_node(node).pods.values()}


def test_a_service_accounts_annotation_grants_and_its_removal_revokes() -> None:
    w = make()
    mine, other = pod(name="a", role=None, service_account="app"), pod(name="b", ip="10.0.0.2", role=None, service_account="x")
    w.set_pod(mine)
    w.set_pod(other)
    delta = w.set_service_account(service_account("app", role=OWN + "AppRole"))
    assert delta.nodes == {"node-1"} and delta.keys_used and served(w) == {"a"}
    assert w.decisions[mine.key].source == "serviceaccount"
    removed = w.set_service_account(service_account("app", role=None))
    assert removed.nodes == {"node-1"} and not w.used_keys() and served(w) == set()
    assert "app" not in {name for _, name in w.service_accounts}


def test_a_deleted_service_account_revokes() -> None:
    w = make()
    w.set_pod(pod(name="a", role=None, service_account="app"))
    w.set_service_account(service_account("app", role=OWN + "AppRole"))
    assert w.delete_service_account("team", "app").nodes == {"node-1"} and not w.used_keys() and served(w) == set()
    assert w.delete_service_account("team", "app") == world.Delta()  # nothing left to do


def test_a_service_account_annotation_is_ignored_without_irsa() -> None:
    w = make(decide.Config())
    w.set_pod(pod(name="a", role=None, service_account="app"))
    w.set_service_account(service_account("app", role=OWN + "AppRole"))
    assert served(w) == set()


def test_a_binding_whose_service_account_no_longer_matches_revokes() -> None:
    w = make()
    w.set_pod(pod(name="a", role=None, service_account="app"))
    by_sa = binding(name="by-sa", role="R", service_account="app")
    w.set_binding(by_sa)
    assert served(w) == {"a"}
    delta = w.set_binding(dataclasses.replace(by_sa, service_account="other", generation=2))
    assert delta.nodes == {"node-1"} and not w.used_keys() and served(w) == set()


def test_removing_a_namespace_default_revokes() -> None:
    w = make(default_role="NsDefault")
    w.set_pod(pod(name="a", role=None))
    assert served(w) == {"a"}
    delta = w.set_namespace(namespace("team", ".*"))
    assert delta.nodes == {"node-1"} and not w.used_keys() and served(w) == set()


def test_narrowing_the_allowed_roles_list_revokes_a_cluster_default() -> None:
    w = world.World(decide.Config(default_role="ClusterDefault"), roles.BaseArn("aws", "123456789012"))
    w.set_namespace(namespace("team", None, allowed_roles='["ClusterDefault"]'))
    w.set_pod(pod(name="a", role=None))
    assert served(w) == {"a"}
    w.set_namespace(namespace("team", None, allowed_roles='["other"]'))
    assert served(w) == set() and w.decisions[("team", "a")] is decide.NONE


def test_a_higher_source_replaces_a_lower_one_without_a_gap_or_a_conflict() -> None:
    w = make(default_role="NsDefault")
    p = pod(name="a", role=None)
    w.set_pod(p)
    (before,) = w.used_keys()
    w.set_pod(dataclasses.replace(p, role="Explicit"))
    (after,) = w.used_keys()
    assert before != after and w.decisions[p.key].outcome == "granted" and w.grants[after].role.name == "Explicit"


def test_an_ip_claimed_twice_is_served_to_neither_whatever_the_source() -> None:
    w = make(default_role="NsDefault")
    w.set_service_account(service_account("app", role=OWN + "AppRole"))
    w.set_pod(pod(name="a", ip="10.0.0.9", role=None, service_account="app"))
    assert served(w) == {"a"}
    w.set_pod(pod(name="b", ip="10.0.0.9", role=None))  # the namespace default's pod, on the same IP
    assert served(w) == set() and w.ip_conflict(("team", "a")) is not None


def test_unknown_namespaces_use_the_operators_rules() -> None:
    rules = policy.Rules("example.com/roles", "regexp", False)
    w = world.World(decide.Config(), roles.BaseArn("aws", "123456789012"), rules=rules)
    assert w.namespace_policy("nowhere").rules == rules


def test_where_the_cluster_default_does_not_apply_and_why() -> None:
    w = world.World(decide.Config(default_role="ClusterDefault"), roles.BaseArn("aws", "123456789012"))
    w.set_namespace(namespace("open", "ClusterDefault"))
    w.set_namespace(namespace("closed", "other"))
    assert w.cluster_default_refusal("open") is None
    refusal = w.cluster_default_refusal("closed")
    assert refusal is not None and "is not permitted in namespace 'closed'" in refusal
    assert w.cluster_default_refusal("unseen") is not None  # deny by default
    assert world.World(decide.Config(), roles.BaseArn("aws", "123456789012")).cluster_default_refusal("closed") is None
