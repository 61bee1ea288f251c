"""kubectl podiam's pure parts: the published format both ways, why/status/who over fixed objects, their text."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from podiam_operator._core import decide, facts, policy, published
from podiam_operator.cli import api, model, status, who, why

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
BASE = "arn:aws:iam::123456789012:role/"


def config_map(*, config: decide.Config = decide.Config(), reader: facts.Reader = facts.DEFAULT_READER,
               updated: datetime.datetime = NOW, **extra: Any) -> dict[str, Any]:
    document = {"replica": "op-1", "phase": "active", "updated": updated.isoformat().replace("+00:00", "Z"),
                "aws": {"baseArn": BASE, "callerArn": "arn:aws:sts::123456789012:assumed-role/op/x"},
                "decisions": published.encode_decisions(config, reader, None, None),
                "proxies": {"n1": {"pod": "proxy-n1", "synced": True, "lastPush": "2026-11-30T11:59:50Z", "pods": 1, "roles": 1}},
                "roles": {BASE + "reader": {"state": "ok", "expiration": "2026-11-30T13:00:00Z", "pods": 1}}, **extra}
    return {"data": {published.KEY: json.dumps(document)}}


def pod(name: str = "app", ns: str = "team", *, role: str | None = "reader", node: str | None = "n1", ip: str | None = "10.0.0.5",
        labels: dict[str, str] | None = None, host_network: bool = False, annotations: dict[str, str] | None = None,
        account: str = "default") -> dict[str, Any]:
    notes = dict(annotations or {})
    if role:
        notes[facts.ROLE_ANNOTATION] = role
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {}, "annotations": notes},
            "spec": {"nodeName": node, "hostNetwork": host_network, "serviceAccountName": account},
            "status": {"phase": "Running", "podIP": ip}}


def namespace(name: str = "team", permitted: str | None = ".*", **annotations: str) -> dict[str, Any]:
    notes = dict(annotations)
    if permitted is not None:
        notes[policy.PERMITTED_ANNOTATION] = permitted
    return {"metadata": {"name": name, "annotations": notes}}


def proxy_pod(node: str = "n1", ready: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": f"proxy-{node}", "namespace": "podiam-system", "uid": "p",
                         "labels": {"app.kubernetes.io/name": "podiam-proxy"}},
            "spec": {"nodeName": node, "hostNetwork": True},
            "status": {"phase": "Running", "hostIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": str(ready)}]}}


def inputs(the_pod: dict[str, Any], *, ns: dict[str, Any] | api.Hidden | None = None, bindings: list[dict[str, Any]] | None = None,
           node_pods: list[dict[str, Any]] | None = None, taint: bool = False, cm: dict[str, Any] | api.Hidden | None = None,
           sa: dict[str, Any] | None = None) -> why.Inputs:
    node = {"metadata": {"name": "n1"}, "spec": {"taints": [{"key": "podiam.io/agent-not-ready"}] if taint else []}}
    return why.Inputs(
        pod=the_pod, namespace=ns if ns is not None else namespace(), service_account=sa or api.Hidden("sa", 404, "NotFound"),
        bindings=bindings or [], node=node, proxy_pods=[proxy_pod()], node_pods=node_pods or [], events=[],
        published=model.published_from(cm if cm is not None else config_map(), "podiam-system/podiam-status"),
        podiam_namespace="podiam-system")


def test_published_decisions_round_trip() -> None:
    config = decide.Config(default_duration=900, per_pod=True, allow_mirror_pods=True, default_role="d", irsa=True,
                           cluster_name="c", container_credentials=False)
    reader = facts.Reader("my/role", "my/eid", policy.Rules("ns/roles", "regexp", False))
    decoded = published.decode_decisions(json.loads(json.dumps(published.encode_decisions(config, reader, "ops", "op"))))
    assert decoded == published.Decisions(config, reader, "ops", "op")
    assert published.decode_decisions({}) == published.Decisions(decide.Config(container_credentials=True), facts.DEFAULT_READER)


def test_role_summary_keeps_the_worst_state_and_earliest_expiry() -> None:
    summary = published.role_summary([
        ("r", decide.KeyState("ok", expiration="2026-01-01T02:00:00Z"), 2),
        ("r", decide.KeyState("ok", expiration="2026-01-01T01:00:00Z"), 1),
        ("r", decide.KeyState("failed", reason="AccessDenied", message="no"), 1),
    ])
    assert summary["r"] == {"state": "failed", "credentialSets": 3, "pods": 4, "expiration": "2026-01-01T01:00:00Z",
                            "reason": "AccessDenied", "message": "no"}


def test_served() -> None:
    report = why.explain(inputs(pod()), NOW)
    assert report["verdict"] == "served" and report["getsCredentials"]
    assert report["sts"]["expiration"] == "2026-11-30T13:00:00Z"
    text = why.render(report)
    assert "Credentials: yes" in text and "<- decides" in text and "last push 10s ago" in text


@pytest.mark.parametrize(("the_pod", "ns", "outcome", "reason"), [
    (pod(), namespace(permitted=None), "denied", "NamespaceNotPermitted"),
    (pod(), namespace(permitted="app-.*"), "denied", "RoleNotPermitted"),
    (pod(), namespace(permitted="("), "denied", "InvalidPermittedRegex"),
    (pod(role="a/../b"), namespace(), "error", "InvalidRole"),
    (pod(host_network=True), namespace(), "denied", "HostNetwork"),
    (pod(annotations={facts.MIRROR_ANNOTATION: "x"}), namespace(), "denied", "MirrorPod"),
])
def test_refusals(the_pod: dict[str, Any], ns: dict[str, Any], outcome: str, reason: str) -> None:
    cm = config_map(config=decide.Config(container_credentials=False))
    report = why.explain(inputs(the_pod, ns=ns, cm=cm), NOW)
    assert (report["decision"]["outcome"], report["decision"]["reason"]) == (outcome, reason)
    assert not report["getsCredentials"] and report["next"]
    why.render(report)


def test_host_network_with_container_credentials_is_served_there() -> None:
    cm = config_map(config=decide.Config(container_credentials=True))
    report = why.explain(inputs(pod(host_network=True, ip="10.0.0.1"), cm=cm), NOW)
    assert report["verdict"] == "served" and "container-credentials" in report["summary"]


def test_conflict_names_bindings() -> None:
    binding = {"metadata": {"name": "writers", "namespace": "team", "uid": "b"},
               "spec": {"role": "writer", "podSelector": {"matchLabels": {"app": "x"}}}}
    report = why.explain(inputs(pod(labels={"app": "x"}), bindings=[binding]), NOW)
    assert report["decision"]["reason"] == "ConflictingBindings" and set(report["decision"]["bindings"]) == {"app", "writers"}
    assert any("writers" in step for step in report["next"])


def test_ip_conflict() -> None:
    other = pod("old", role=None)
    report = why.explain(inputs(pod(), node_pods=[other]), NOW)
    assert report["verdict"] == "ip-conflict" and "team/old" in report["ipConflict"]


def test_taint_and_unsynced_proxy() -> None:
    report = why.explain(inputs(pod(), taint=True), NOW)
    assert report["verdict"] == "node-not-ready"
    cm = config_map(proxies={"n1": {"pod": "proxy-n1", "synced": False, "lastError": "handshake failed"}})
    report = why.explain(inputs(pod(), cm=cm), NOW)
    assert report["verdict"] == "proxy-not-synced" and "handshake failed" in report["summary"]


def test_sts_error() -> None:
    cm = config_map(roles={BASE + "reader": {"state": "failed", "reason": "AccessDenied", "message": "not trusted"}})
    report = why.explain(inputs(pod(), cm=cm), NOW)
    assert report["verdict"] == "sts-error" and "AccessDenied" in report["summary"]


def test_no_role_and_sources_in_order() -> None:
    cm = config_map(config=decide.Config(default_role="fallback", irsa=False))
    sa = {"metadata": {"name": "default", "namespace": "team", "uid": "s",
                       "annotations": {facts.IRSA_ANNOTATION: BASE + "irsa"}}}
    report = why.explain(inputs(pod(role=None), ns=namespace(permitted="reader"), cm=cm, sa=sa), NOW)
    assert report["verdict"] == "no-role"
    levels = [(row["level"], row["names"], row["note"].split(":")[0]) for row in report["sources"]]
    assert levels == [(1, None, ""), (2, BASE + "irsa", "ignored"), (3, None, ""), (4, "fallback", "ignored here")]


def test_namespace_default_decides() -> None:
    report = why.explain(inputs(pod(role=None), ns=namespace(**{facts.DEFAULT_ROLE_ANNOTATION: "reader"})), NOW)
    assert report["verdict"] == "served" and [r["level"] for r in report["sources"] if r["decides"]] == [3]


def test_without_the_operator_status() -> None:
    report = why.explain(inputs(pod(), cm=api.Hidden("configmap podiam-system/podiam-status", 403, "Forbidden")), NOW)
    assert any("forbidden to you" in text for text in report["notShown"])
    assert report["decision"]["outcome"] == "error"  # a role name needs the operator's account, which is unknown here
    stale = why.explain(inputs(pod(), cm=config_map(updated=NOW - datetime.timedelta(minutes=5))), NOW)
    assert stale["operator"]["stale"] and any("has not written its status" in s for s in stale["next"])


def test_status_report() -> None:
    peering = {"status": {"op-1": {"priority": 5, "lastseen": "2026-11-30T11:59:58", "lifetime": 15},
                          "op-2": {"priority": 3, "lastseen": "2026-11-30T11:50:00", "lifetime": 15}}}
    binding = {"metadata": {"name": "b", "namespace": "team"}, "status": {"phase": "Denied", "message": "no",
                                                                            "conditions": [{"type": "Ready", "reason": "X"}]}}
    node = {"metadata": {"name": "n2"}, "spec": {"taints": [{"key": "podiam.io/agent-not-ready"}]}}
    report = status.explain(status.Inputs(model.published_from(config_map(), "x"), "podiam-system", peering, [node],
                                          [proxy_pod()], [binding], []), NOW)
    assert report["operator"]["activeReplica"] == "op-1"
    assert [(r["identity"], r["alive"], r["active"]) for r in report["operator"]["replicas"]] == [("op-1", True, True), ("op-2", False, False)]
    assert report["taintedNodes"] == ["n2"] and report["bindings"]["byPhase"] == {"Denied": 1}
    assert report["roles"][0]["expiresIn"] == "in 60m"
    text = status.render(report)
    assert "Operator: active op-1" in text and "n2" in text


def test_who_report() -> None:
    pods = [pod("a"), pod("b", ns="other", ip="10.0.0.6")]
    report = who.explain(who.Inputs(model.published_from(config_map(), "x"), pods,
                                    [namespace(), namespace("other", permitted="nothing")], [], None), "reader")
    assert [h["pod"] for h in report["holds"]] == ["team/a"] and report["holds"][0]["served"] is True
    assert [(r["pod"], r["reason"]) for r in report["refused"]] == [("other/b", "RoleNotPermitted")]
    assert report["permittedIn"] == ["team"]
    assert "team/a" in who.render(report)
    assert who.explain(who.Inputs(model.published_from(config_map(), "x"), [], [], [], None), "a/../b")["error"]


def test_ago() -> None:
    assert model.ago(NOW - datetime.timedelta(seconds=5), NOW) == "5s ago"
    assert model.ago(NOW + datetime.timedelta(hours=3), NOW) == "in 3h"
    assert model.ago(None, NOW) == "never"


def test_a_proxy_left_out_of_a_large_clusters_document_counts_as_synced() -> None:
    from podiam_operator.cli import model

    document = {"proxies": {"n1": {"synced": False, "lastError": "handshake failed"}}, "proxiesOmitted": 4999}
    published = model.Published(document=document, decisions=None, base=None, updated=None)  # type: ignore[arg-type]
    assert published.proxy("n2") == {"synced": True}
    assert published.proxy("n1") == {"synced": False, "lastError": "handshake failed"}
    assert model.Published(document={"proxies": {}}, decisions=None, base=None, updated=None).proxy("n2") is None  # type: ignore[arg-type]
