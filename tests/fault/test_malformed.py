"""Malformed annotations, namespace regexes and bindings: a clear status or Event, and nothing else affected.

Already covered elsewhere: malformed PodRoleBinding specs refused by the CRD
at apply time (tests/integration/operator/test_basics.py), an uncompilable
namespace regex and a binding without a selector (test_policy.py). Here: what
the CRD cannot refuse (pod annotations, namespace annotations), a regex that
compiles but backtracks catastrophically, and selectors matching nothing or
everything; meanwhile a healthy pod in another namespace must stay served
and changes there must keep flowing.
"""

from __future__ import annotations

import time

import pytest

from localcluster import invariants
from localcluster import stack as stacks

pytestmark = pytest.mark.fault
ACCOUNT = "123456789012"


def arn(role: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{role}"


BAD_ROLES = {
    "spaces": "not a role!",
    "short-account": "arn:aws:iam::12:role/x",
    "not-iam": "arn:aws:s3:::bucket/x",
    "name-too-long": "r" * 65,
    "enormous": "x" * 100_000,
    "newline": "role\nwith-newline",
    "unicode": "rôle",
    "empty-arn-name": "arn:aws:iam::123456789012:role/",
}


def _healthy(stack: stacks.Stack, checker: invariants.Checker, name: str) -> tuple[str, stacks.Node, str]:
    """A well-formed pod in a namespace of its own, to show nothing else is affected."""
    ns = f"healthy-{name}"
    stack.create_namespace(ns, ".*")
    node, ip = stack.nodes[1], stack.next_ip()
    with checker.change(node.name, ip, uid="healthy", role_arn=arn(f"healthy-{name}")):
        stack.create_pod(ns, "healthy", role=f"healthy-{name}", node=node, ip=ip)
    stack.wait_credentials(node, ip)
    return ns, node, ip


def _still_flowing(stack: stacks.Stack, checker: invariants.Checker, ns: str, bound: float = 10.0) -> float:
    """A change elsewhere still reaches the proxies promptly: a new pod is served within ``bound``."""
    node, ip = stack.nodes[0], stack.next_ip()
    started = time.monotonic()
    with checker.change(node.name, ip, uid="probe", role_arn=arn(f"{ns}-probe")):
        stack.create_pod(ns, f"probe-{int(started * 1000) % 100000}", role=f"{ns}-probe", node=node, ip=ip)
    stack.wait_credentials(node, ip, timeout=bound)
    return time.monotonic() - started


def test_malformed_role_annotations(stack: stacks.Stack, ns: str, checker: invariants.Checker) -> None:
    healthy_ns, healthy_node, healthy_ip = _healthy(stack, checker, "roles")
    node = stack.nodes[0]
    ips = {label: stack.next_ip() for label in BAD_ROLES}
    with invariants.Poller(checker, lambda: [(healthy_node, healthy_ip), *((node, ip) for ip in ips.values())], threads=2) as poller:
        for label, role in BAD_ROLES.items():
            with checker.change(node.name, ips[label], uid=label, role_arn=None):
                stack.create_pod(ns, label, annotations={"iam.amazonaws.com/role": role}, node=node, ip=ips[label])
        for label in BAD_ROLES:
            event = stack.wait_event(ns, "Pod", label, "InvalidRole", timeout=20)
            assert "iam.amazonaws.com/role" in event["message"], event["message"]
            assert len(event["message"]) <= 1024
        print(f"\na change elsewhere still served in {_still_flowing(stack, checker, healthy_ns):.2f}s")
        time.sleep(2)
    for label, ip in ips.items():
        assert all(a.document is None for a in poller.answers if a.ip == ip), label
        binding = stack.binding(ns, label)
        assert binding is None or binding.get("status", {}).get("phase") in (None, "Error"), (label, binding)
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert not [a for a in poller.answers if a.ip == healthy_ip and a.document is None]
    # The operator does not spin on objects it can never create.
    log = stack.operator.log()
    assert log.count("pod-owned binding") < 5 * len(BAD_ROLES), log[-3000:]


@pytest.mark.parametrize(("label", "annotations"), [
    ("external-id-bad-chars", {"iam.amazonaws.com/external-id": "id with spaces & ;"}),
    ("external-id-enormous", {"iam.amazonaws.com/external-id": "e" * 50_000}),
    ("session-name-bad-chars", {"iam.amazonaws.com/session-name": "who?/am i" + "z" * 200}),
])
def test_malformed_optional_annotations(stack: stacks.Stack, ns: str, checker: invariants.Checker, label: str,
                                        annotations: dict[str, str]) -> None:
    node, ip = stack.nodes[0], stack.next_ip()
    role = f"opt-{label}"
    with invariants.Poller(checker, lambda: [(node, ip)]) as poller:
        # Allowed: the session name is sanitised. Refused: an external id STS would reject.
        with checker.change(node.name, ip, uid=label, role_arn=arn(role)):
            stack.create_pod(ns, label, role=role, annotations=annotations, node=node, ip=ip)
        if label.startswith("session-name"):
            stack.wait_credentials(node, ip)
        else:
            stacks.wait_for(lambda: [e for e in stack.events(ns, kind="Pod", name=label) if e["type"] == "Warning"], 20,
                            f"a Warning Event on pod {label}")
            time.sleep(1)
            assert stack.imds(node, ip).status == 404
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert poller.answers


@pytest.mark.parametrize(("label", "regex", "reason"), [
    ("enormous", "r" * 5000, "InvalidPermittedRegex"),
    ("catastrophic", "(a|a)+", "InvalidPermittedRegex"),
    ("alternation-overlap", "(a|aa)+", "InvalidPermittedRegex"),
])
def test_hostile_namespace_regexes(stack: stacks.Stack, checker: invariants.Checker, label: str, regex: str, reason: str) -> None:
    healthy_ns, healthy_node, healthy_ip = _healthy(stack, checker, label)
    ns = f"regex-{label}"
    stack.create_namespace(ns, regex)
    node, ip = stack.nodes[0], stack.next_ip()
    role = "a" * 40 + "-b"  # a valid name that makes a backtracking regex explode
    with invariants.Poller(checker, lambda: [(healthy_node, healthy_ip), (node, ip)], threads=2) as poller:
        with checker.change(node.name, ip, uid="victim", role_arn=None):
            stack.create_pod(ns, "victim", role=role, node=node, ip=ip)
        binding = stack.wait_binding_phase(ns, "victim", "Denied", timeout=30)
        assert binding["status"]["conditions"][0]["reason"] == reason, binding["status"]
        assert "iam.amazonaws.com/permitted" in binding["status"]["message"]
        took = _still_flowing(stack, checker, healthy_ns)
        print(f"\n{label} regex: a change elsewhere still served in {took:.2f}s")
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert not [a for a in poller.answers if a.ip == healthy_ip and a.document is None]


def test_selectors_matching_nothing_or_everything(stack: stacks.Stack, ns: str, checker: invariants.Checker) -> None:
    healthy_ns, healthy_node, healthy_ip = _healthy(stack, checker, "selectors")
    node = stack.nodes[0]
    plain = {name: stack.next_ip() for name in ("p1", "p2")}
    annotated_ip = stack.next_ip()
    with invariants.Poller(checker, lambda: [(healthy_node, healthy_ip), (node, annotated_ip), *((node, ip) for ip in plain.values())],
                           threads=2) as poller:
        for name, ip in plain.items():
            with checker.change(node.name, ip, uid=name, role_arn=arn("everyone")):
                stack.create_pod(ns, name, node=node, ip=ip)
        with checker.change(node.name, annotated_ip, uid="own", role_arn=arn("own-role")):
            stack.create_pod(ns, "own", role="own-role", node=node, ip=annotated_ip)
        stack.wait_credentials(node, annotated_ip)
        with checker.change(node.name, annotated_ip, uid="own", role_arn=None):  # two roles now: a conflict, nothing served
            stack.apply_binding(ns, "everything", {"role": "everyone", "podSelector": {}})
        conflicted = time.monotonic()
        stack.apply_binding(ns, "nothing", {"role": "nobody", "podSelector": {"matchLabels": {"no": "such-pod"}}})
        for name, ip in plain.items():
            assert stack.wait_credentials(node, ip)["RoleName"] == "everyone"
        everything = stack.wait_binding_phase(ns, "everything", "Conflict")
        assert "own-role" in everything["status"]["message"]
        stack.wait_binding_phase(ns, "own", "Conflict")
        nothing = stacks.wait_for(lambda: (b := stack.binding(ns, "nothing")) and b.get("status", {}).get("phase") and b, 20, "status")
        assert nothing["status"]["pods"] == 0, nothing["status"]
        assert nothing["status"]["phase"] in ("Pending", "Bound"), nothing["status"]
        assert nothing["status"]["message"], nothing["status"]
        # Selectors are namespaced: the healthy pod elsewhere keeps its own role.
        assert stack.credentials(healthy_node, healthy_ip)["RoleName"] == "healthy-selectors"  # type: ignore[index]
        time.sleep(1)
    assert checker.violations == [], [str(v) for v in checker.violations[:5]]
    assert all(a.document is None for a in poller.answers if a.ip == annotated_ip and a.started > conflicted + checker.grace)
    print(f"\nselector matching nothing: phase {nothing['status']['phase']}, message {nothing['status']['message']!r}")
