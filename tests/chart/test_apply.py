"""The rendered chart, server-side applied to the real API server from localcluster/controlplane.

Server-side apply with strict field validation: the API server itself checks
every object (schemas, unknown fields, RBAC rules, CRs against their CRDs).
Its controllers then act on them: the DaemonSet controller must place a
proxy pod on every node, tainted or not, and the Deployment controller must
create the operator's replicas.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import helm as _helm
from tests.chart import release as releases
from localcluster.controlplane import ControlPlane

pytestmark = pytest.mark.chart

_octets = itertools.count(60, 2)

VARIANTS: dict[str, tuple[dict[str, Any], list[Path]]] = {
    "defaults": ({}, []),
    "kiam-guide": ({}, [_helm.CHART / "ci" / "kiam-guide-values.yaml"]),
    # ServiceMonitor needs the Prometheus Operator's CRD, which this cluster does not have.
    "cert-manager": ({"metrics": {"serviceMonitor": {"enabled": False}}}, [_helm.CHART / "ci" / "cert-manager-values.yaml"]),
    "uninstall-step": ({"proxy": {"host": {"iptables": False, "cleanupIptables": True}}}, []),
    "single-standalone": ({"operator": {"replicas": 1, "peering": {"enabled": False}, "manageNodeTaint": False}}, []),
    "network-policy": ({"operator": {"networkPolicy": {"enabled": True, "metricsFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["prometheus"]}]}},
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
    ]}}}, []),
}


@pytest.fixture(scope="module")
def chart_crds(controlplane: ControlPlane) -> None:
    controlplane.install_crds(*sorted((_helm.CHART / "crds").glob("*.yaml")))


@pytest.fixture
def make_release(controlplane: ControlPlane, helm: _helm.Helm, chart_crds: None, tmp_path: Path) -> Iterator[Any]:
    made: list[releases.Release] = []

    def make(name: str, **kwargs: Any) -> releases.Release:
        release = releases.Release(controlplane, helm, tmp_path / name, name, node_octet=next(_octets), **kwargs)
        made.append(release)
        return release

    yield make
    for release in made:
        release.uninstall()


def _can_i(controlplane: ControlPlane, service_account: str, namespace: str, *args: str) -> bool:
    out = controlplane.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{namespace}:{service_account}",
                               "-n", namespace, check=False)
    return out.strip() == "yes"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_are_accepted_and_acted_on(controlplane: ControlPlane, make_release: Any, variant: str) -> None:
    values, files = VARIANTS[variant]
    release: releases.Release = make_release(f"apply-{variant}", values=values, values_files=files)
    release.add_nodes(extra_taints={1: ["dedicated=infra:NoSchedule"]})
    out = release.apply()
    for obj in release.objects:
        assert f"{obj['kind'].lower()}" in out.lower() and obj["metadata"]["name"] in out
        assert "serverside-applied" in out

    # The DaemonSet controller places a proxy pod on each node, the tainted ones included.
    release.schedule_proxy_pods()
    assert all(node.pod for node in release.nodes)
    replicas = release.object("Deployment")["spec"]["replicas"]
    selector = release.object("Deployment")["spec"]["selector"]["matchLabels"]
    releases.wait_for(
        lambda: len([p for p in controlplane.api("GET", f"/api/v1/namespaces/{release.namespace}/pods")["items"]
                     if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())]) == replicas,
        60, f"{replicas} operator pods",
    )


def test_service_accounts_can_do_what_the_chart_says_and_no_more(controlplane: ControlPlane, make_release: Any) -> None:
    release: releases.Release = make_release("apply-rbac")
    release.apply()
    ns = release.namespace
    proxy_sa, operator_sa = release.service_account("proxy"), release.service_account("operator")
    # The proxies: nothing at all.
    for verb, resource in [("get", "pods"), ("list", "secrets"), ("watch", "nodes"), ("create", "events"),
                           ("get", "podrolebindings.podiam.io"), ("get", f"secrets/{release.fullname()}-proxy-tls")]:
        assert not _can_i(controlplane, proxy_sa, ns, verb, resource), f"the proxy may {verb} {resource}"
    # The operator: its own TLS Secrets by name, never Secrets at large, never writes to pods or namespaces.
    for verb, resource in [("get", f"secrets/{release.fullname()}-proxy-tls"), ("update", f"secrets/{release.fullname()}-ca"),
                           ("create", "secrets"), ("list", "pods"), ("watch", "namespaces"), ("patch", "nodes"),
                           ("patch", "podrolebindings.podiam.io/status"), ("create", "events")]:
        assert _can_i(controlplane, operator_sa, ns, verb, resource), f"the operator may not {verb} {resource}"
    for verb, resource in [("get", "secrets/someone-elses"), ("list", "secrets"), ("watch", "secrets"), ("patch", "pods"),
                           ("create", "pods"), ("patch", "namespaces"), ("delete", "nodes"), ("create", "clusterkopfpeerings.kopf.dev")]:
        assert not _can_i(controlplane, operator_sa, ns, verb, resource), f"the operator may {verb} {resource}"
    assert not _can_i(controlplane, operator_sa, "default", "get", "secrets")
