"""The operator does its whole job with the chart's RBAC and nothing else.

The chart is applied to the real API server; the operator runs as a real
process with the environment of the chart's container and a token of the
chart's ServiceAccount (not as admin); proxies run with the chart's proxy
environment and the certificates of the Secret the operator created. The
job: TLS Secrets, node taints removed once each node's proxy has its
snapshot, bindings for annotated pods (created, Bound with status, deleted
when the annotation goes), a user's PodRoleBinding Bound, denials reported
as Events, credentials served to the pod; with IRSA's ServiceAccount
annotation on, a ServiceAccount's role served to its pod and revoked when
the annotation goes, its refusal an Event on the ServiceAccount. Not a
single 403 on the way.

And the test can fail: with one verb taken out of the rendered RBAC, the
matching part of the job is not done and the 403 shows in the operator's log.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import helm as _helm
from tests.chart import release as releases
from localcluster.controlplane import ApiError, ControlPlane, kubelet
from localcluster import certs, moto
from localcluster import proxy as proxy_support

pytestmark = pytest.mark.chart

ROLE = "chart-test-role"
GROUP_PATH = "/apis/podiam.io/v1alpha1"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/"
_octets = itertools.count(100, 2)
_pod_ips = (f"127.0.3.{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def chart_crds(controlplane: ControlPlane) -> None:
    controlplane.install_crds(*sorted((_helm.CHART / "crds").glob("*.yaml")))


@pytest.fixture
def installed(controlplane: ControlPlane, helm: _helm.Helm, sts: moto.StsFront, chart_crds: None,
              tmp_path: Path) -> Iterator[Callable[..., releases.Release]]:
    made: list[releases.Release] = []

    def install(name: str, mutate: releases.Mutation | None = None, *, values: dict[str, Any] | None = None,
                values_files: tuple[Path, ...] = (), before_operator: Callable[[releases.Release], None] | None = None,
                ) -> releases.Release:
        release = releases.Release(controlplane, helm, tmp_path / name, name, sts=sts, node_octet=next(_octets),
                                   values=values, values_files=values_files)
        made.append(release)
        release.add_nodes(extra_taints={1: ["dedicated=infra:NoSchedule"]})
        release.apply(mutate)
        release.schedule_proxy_pods()
        if before_operator is not None:
            before_operator(release)
        release.start_operator()
        return release

    yield install
    for release in made:
        release.stop()
        print(f"--- {release.name}: operator log (tail) ---\n{release.operator_log()[-6000:]}")
        # The users' namespaces of this release (<release>-apps, ...), then the release itself.
        for namespace in controlplane.api("GET", "/api/v1/namespaces")["items"]:
            name = namespace["metadata"]["name"]
            if name.startswith(f"{release.name}-") and name != release.namespace:
                releases.delete_namespace(controlplane, name)
        release.uninstall()


# --- the user's side -----------------------------------------------------------------------


def _namespace(cp: ControlPlane, name: str, permitted: str | None) -> None:
    annotations = {} if permitted is None else {"iam.amazonaws.com/permitted": permitted}
    cp.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations}})


def _pod(cp: ControlPlane, namespace: str, name: str, node: releases.Node, *, role: str | None = None,
         labels: dict[str, str] | None = None, service_account: str | None = None) -> str:
    annotations = {"iam.amazonaws.com/role": role} if role else {}
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "amazon/aws-cli"}]}
    if service_account:
        spec["serviceAccountName"] = service_account
    cp.api("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, "annotations": annotations},
        "spec": spec,
    })
    kubelet.bind_pod(cp, namespace, name, node.name)
    ip = next(_pod_ips)
    kubelet.set_pod_status(cp, namespace, name, pod_ip=ip)
    return ip


def _binding(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = cp.api("GET", f"{GROUP_PATH}/namespaces/{namespace}/podrolebindings/{name}")
        return found
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def _phase(cp: ControlPlane, namespace: str, name: str) -> str | None:
    binding = _binding(cp, namespace, name)
    phase = (binding or {}).get("status", {}).get("phase")
    return str(phase) if phase is not None else None


def _events(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if e.get("source", {}).get("component") == "podiam-operator" or e.get("reportingComponent") == "podiam-operator"]


def _credentials(release: releases.Release, node: releases.Node, pod_ip: str) -> dict[str, Any] | None:
    port = release.ports["metadata"]
    listing = proxy_support.http_request(node.ip, port, "GET", CREDENTIALS, source_ip=pod_ip)
    if listing.status != 200:
        return None
    document = proxy_support.http_request(node.ip, port, "GET", CREDENTIALS + listing.text.strip(), source_ip=pod_ip)
    return json.loads(document.body) if document.status == 200 else None


def _body(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as error:
        return str(error.read().decode())


# --- the whole job ----------------------------------------------------------------------------


def _open_nodes(release: releases.Release) -> None:
    """The proxies start with their Secret's files; the operator's snapshot makes them ready; their nodes lose the taint."""
    release.start_proxies()
    release.mark_ready_proxies(timeout=60)
    for node in release.nodes:
        releases.wait_for(lambda n=node: "podiam.io/agent-not-ready" not in release.taints(n), 30,  # type: ignore[misc]
                          f"taint removed from {node.name}")
    assert "dedicated" in release.taints(release.nodes[1])  # other taints stay
    # The kubelet's view of the operator: its readinessProbe, as the chart renders it, answers "ready: active".
    container = _helm.container(release.object("Deployment"), "operator")
    probe = container["readinessProbe"]["httpGet"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["port"])

    def ready() -> bool:
        result = proxy_support.http_request("127.0.0.1", port, "GET", probe["path"])
        return result.status == 200 and result.text.startswith("ready: active")

    releases.wait_for(ready, 30, "the operator's readinessProbe passes")


def _service_account(cp: ControlPlane, namespace: str, name: str, role: str | None) -> None:
    annotations = {"eks.amazonaws.com/role-arn": role} if role else {}
    cp.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "annotations": annotations}})


def _serve_service_accounts(cp: ControlPlane, release: releases.Release, apps: str, denied: str) -> None:
    """IRSA's annotation (operator.roleSources.irsaServiceAccounts): served, revoked, refused with an Event on it."""
    node = release.nodes[1]
    _service_account(cp, apps, "irsa-app", f"arn:aws:iam::{moto.ACCOUNT_ID}:role/{ROLE}")
    ip = _pod(cp, apps, "irsa-1", node, service_account="irsa-app")
    releases.wait_for(lambda: _credentials(release, node, ip), 30, "the ServiceAccount's role served to its pod")
    cp.api("PATCH", f"/api/v1/namespaces/{apps}/serviceaccounts/irsa-app",
           {"metadata": {"annotations": {"eks.amazonaws.com/role-arn": None}}})
    releases.wait_for(lambda: _credentials(release, node, ip) is None, 10, "revoked with the annotation")
    _service_account(cp, denied, "irsa-denied", f"arn:aws:iam::{moto.ACCOUNT_ID}:role/{ROLE}")
    _pod(cp, denied, "irsa-denied-1", node, service_account="irsa-denied")
    releases.wait_for(lambda: [e for e in _events(cp, denied) if e["involvedObject"]["kind"] == "ServiceAccount"], 30,
                      "the refusal as an Event on the ServiceAccount")


def _serve_pods(cp: ControlPlane, release: releases.Release, *, irsa: bool = False) -> None:
    """Annotated pods, a user's binding, a denial with Events, a revocation: the operator's job for users."""
    apps, denied = f"{release.name}-apps", f"{release.name}-denied"
    _namespace(cp, apps, ".*")
    _namespace(cp, denied, None)
    try:
        # An annotated pod in a permitting namespace: its binding is created, Bound, and it reads credentials.
        node = release.nodes[0]
        ip = _pod(cp, apps, "tester", node, role=ROLE)
        releases.wait_for(lambda: _phase(cp, apps, "tester") == "Bound", 30, "binding apps/tester Bound")
        status = _binding(cp, apps, "tester")["status"]  # type: ignore[index]
        assert status["roleArn"].endswith(f":role/{ROLE}") and status["pods"] == 1 and status["expiration"]
        creds = releases.wait_for(lambda: _credentials(release, node, ip), 30, "credentials served to the pod")
        assert creds["AccessKeyId"] and creds["Code"] == "Success"

        # A user's PodRoleBinding over labelled pods: its status is written too.
        _pod(cp, apps, "worker", release.nodes[1], labels={"app": "worker"})
        cp.api("POST", f"{GROUP_PATH}/namespaces/{apps}/podrolebindings", {
            "apiVersion": "podiam.io/v1alpha1", "kind": "PodRoleBinding", "metadata": {"name": "workers", "namespace": apps},
            "spec": {"role": ROLE, "podSelector": {"matchLabels": {"app": "worker"}}},
        })
        releases.wait_for(lambda: _phase(cp, apps, "workers") == "Bound", 30, "user binding Bound")

        # A pod where no role is permitted: Denied, with Events.
        _pod(cp, denied, "intruder", node, role=ROLE)
        releases.wait_for(lambda: _phase(cp, denied, "intruder") == "Denied", 30, "binding denied/intruder Denied")
        releases.wait_for(lambda: _events(cp, denied), 30, "an Event about the denial")

        # The annotation removed: the operator deletes the binding it made.
        cp.api("PATCH", f"/api/v1/namespaces/{apps}/pods/tester", {"metadata": {"annotations": {"iam.amazonaws.com/role": None}}})
        releases.wait_for(lambda: _binding(cp, apps, "tester") is None, 30, "binding apps/tester deleted")

        if irsa:
            _serve_service_accounts(cp, release, apps, denied)

        forbidden = release.forbidden_lines()
        assert not forbidden, "the chart's RBAC refused the operator:\n" + "\n".join(forbidden)
        assert release.operator is not None and release.operator.alive()
    finally:
        release.stop()  # before the namespaces go: Events into a terminating namespace are refused too
        for name in (apps, denied):
            releases.delete_namespace(cp, name)


def test_operator_does_its_whole_job_with_the_charts_rbac_and_no_403(
    controlplane: ControlPlane, installed: Callable[..., releases.Release],
) -> None:
    cp = controlplane
    release = installed("rbac-ok", values={"operator": {"roleSources": {"irsaServiceAccounts": True}}})
    fullname = release.fullname()
    # TLS auto mode: the CA and both leaves, in the release namespace.
    for secret in (f"{fullname}-ca", f"{fullname}-proxy-tls", f"{fullname}-operator-tls"):
        path = f"/api/v1/namespaces/{release.namespace}/secrets/{secret}"
        releases.wait_for(lambda p=path: cp.api("GET", p), 60, f"Secret {secret}")  # type: ignore[misc]
    _open_nodes(release)
    _serve_pods(cp, release, irsa=True)


def _guide_secrets(directory: Path) -> Callable[[releases.Release], None]:
    """The guide's step 3 (kubectl create secret generic kiam-server-tls / kiam-agent-tls --from-file=...), test CA."""
    def create(release: releases.Release) -> None:
        pki = certs.make_pki(directory)
        server = pki.issue("server", "kiam-server")  # server.json: hosts kiam-server (the operator's identity now)
        agent = pki.issue("agent", "podiam-proxy", common_name="Kiam Agent")  # agent.json plus the hosts podiam needs
        release.create_secret("kiam-server-tls", {"ca.pem": pki.ca.read_bytes(), "server.pem": server.cert.read_bytes(),
                                                  "server-key.pem": server.key.read_bytes()})
        release.create_secret("kiam-agent-tls", {"ca.pem": pki.ca.read_bytes(), "agent.pem": agent.cert.read_bytes(),
                                                 "agent-key.pem": agent.key.read_bytes()})
    return create


def test_the_guides_values_migrated_work_with_the_guides_secrets(
    controlplane: ControlPlane, installed: Callable[..., releases.Release], tmp_path: Path, sts: moto.StsFront,
) -> None:
    """ci/kiam-guide-values.yaml: secrets mode, cfssl file names, assumeRoleArn, kiam-server identity, !eth0."""
    release = installed(
        "rbac-guide", values_files=(_helm.CHART / "ci" / "kiam-guide-values.yaml",),
        # The test machine has no /etc/pki bundle; and debug logs would only be longer.
        values={"operator": {"extraEnv": {"AWS_CA_BUNDLE": None, "PODIAM_METRICS_ADDRESS": "127.0.0.1"},
                             "log": {"level": "info", "format": "plain"}}},
        before_operator=_guide_secrets(tmp_path / "guide-pki"),
    )
    _open_nodes(release)
    # useHostNetwork: kopf's /healthz listens on the pod's IP (here 127.0.0.1) only, not on every address of the node.
    liveness = release.ports["liveness"]
    socket.create_connection(("127.0.0.1", liveness), timeout=2).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", liveness), timeout=2).close()
    _serve_pods(controlplane, release)
    # server.assumeRoleArn: the operator assumed the intermediate role first.
    assert sts.assume_role_count("arn:aws:iam::123456789012:role/kiam-server") >= 1


def test_static_keys_from_a_secret_are_the_operators_identity_and_never_show(
    controlplane: ControlPlane, installed: Callable[..., releases.Release], moto_server: moto.MotoServer,
) -> None:
    """operator.credentialsSecret: keys of an IAM user, by reference; GetCallerIdentity names that user."""
    import boto3

    iam = boto3.client("iam", endpoint_url=moto_server.url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    user = f"podiam-static-{next(_octets)}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    secret = key["SecretAccessKey"]

    def create_secret(release: releases.Release) -> None:  # kubectl create secret generic podiam-aws --from-literal=...
        release.create_secret("podiam-aws", {"AWS_ACCESS_KEY_ID": key["AccessKeyId"].encode(),
                                             "AWS_SECRET_ACCESS_KEY": secret.encode()})

    release = installed("rbac-keys", values={"operator": {"credentialsSecret": "podiam-aws"}}, before_operator=create_secret)
    _open_nodes(release)
    readyz = f"http://127.0.0.1:{release.ports['metrics']}/readyz"
    identity = f"AWS identity: arn:aws:iam::{moto.ACCOUNT_ID}:user/{user}"
    # /readyz says "ready: active" to anyone; the identity is in the details it logs when they change.
    releases.wait_for(lambda: _body(readyz) == "ready: active\n" and identity in release.operator_log(), 60,
                      "the static keys' user in the operator's logged readiness")
    _serve_pods(controlplane, release)
    assert secret not in release.operator_log()
    for obj in release.objects:
        assert secret not in json.dumps(obj)


# --- one verb less: the test notices ---------------------------------------------------------------


def _drop_verb(kind: str, resource: str, verb: str) -> releases.Mutation:
    def mutate(objects: list[dict[str, Any]]) -> None:
        (role,) = [o for o in objects if o["kind"] == kind]
        hits = [rule for rule in role["rules"] if resource in rule["resources"] and verb in rule["verbs"]]
        assert hits, f"the chart's {kind} grants no {verb} on {resource}: nothing to take away"
        for rule in hits:
            if len(rule["resources"]) > 1:  # the other resources of the rule keep the verb
                role["rules"].append({**rule, "resources": [r for r in rule["resources"] if r != resource]})
                rule["resources"] = [resource]
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
        role["rules"] = [rule for rule in role["rules"] if rule["verbs"]]  # a rule without verbs is invalid

    return mutate


# What the operator's log says when that verb is missing.
EXPECTED_LOG = {
    "podrolebindings/status:patch": re.compile(r"status of binding \S+ not written: HTTP 403"),
    "events:create": re.compile(r"could not post Event NamespaceNotPermitted on \w+ \S+: HTTP 403"),
    "nodes:patch": re.compile(r"could not remove taint podiam.io/agent-not-ready from node \S+: HTTP 403"),
    "secrets:create": re.compile(r"the operator may not create Secret \S+ \(HTTP 403\)"),
    "serviceaccounts:list": re.compile(r"listing serviceaccounts: HTTP 403: serviceaccounts is forbidden"),
}


def _wait_forbidden(release: releases.Release, expected: re.Pattern[str], timeout: float = 45.0) -> None:
    releases.wait_for(lambda: any(expected.search(line) for line in release.forbidden_lines()), timeout,
                      f"{expected.pattern!r} in the operator's log")


@pytest.mark.parametrize("verb", sorted(EXPECTED_LOG))
def test_a_missing_verb_fails_the_job_and_shows_as_403(
    controlplane: ControlPlane, installed: Callable[..., releases.Release], verb: str,
) -> None:
    cp = controlplane
    resource, name = verb.split(":")
    expected = EXPECTED_LOG[verb]
    kind = "Role" if resource == "secrets" else "ClusterRole"
    # ServiceAccounts are listed (and in the ClusterRole) only when their IRSA annotation names roles.
    values = {"operator": {"roleSources": {"irsaServiceAccounts": True}}} if resource == "serviceaccounts" else None
    release = installed(f"rbac-no-{name}-{resource.split('/')[-1]}", mutate=_drop_verb(kind, resource, name), values=values)
    fullname = release.fullname()

    if resource == "secrets":
        # No CA, no certificates: the proxies' Secret never appears, so no proxy can start.
        _wait_forbidden(release, expected)
        with pytest.raises(ApiError) as missing:
            cp.api("GET", f"/api/v1/namespaces/{release.namespace}/secrets/{fullname}-proxy-tls")
        assert missing.value.status == 404
        return

    release.start_proxies()
    if resource == "serviceaccounts":
        # It cannot list them, so its starting picture is never complete: the operator does nothing at all.
        _wait_forbidden(release, expected)
        time.sleep(5.0)
        assert all(proxy_support.http_request(node.ip, release.ports["health"], "GET", "/readyz").status == 503
                   for node in release.nodes), "a proxy got a snapshot without the operator listing ServiceAccounts"
        return
    release.mark_ready_proxies(timeout=60)
    if resource == "nodes":
        _wait_forbidden(release, expected)
        assert all("podiam.io/agent-not-ready" in release.taints(node) for node in release.nodes)
        return

    apps = f"{release.name}-apps"
    _namespace(cp, apps, None if resource == "events" else ".*")
    _pod(cp, apps, "tester", release.nodes[0], role=ROLE)
    _wait_forbidden(release, expected)
    if resource == "events":
        releases.wait_for(lambda: _phase(cp, apps, "tester") == "Denied", 30, "binding Denied")
        assert not _events(cp, apps), "an Event was posted without the create verb"
    else:
        releases.wait_for(lambda: _binding(cp, apps, "tester") is not None, 30, "binding created")
        assert _phase(cp, apps, "tester") != "Bound"
