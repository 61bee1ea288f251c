"""proxy.podIps: the proxy-pod-ips container beside the proxy, and exactly the privilege it has (none but reading one folder)."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster import helm as _helm

pytestmark = pytest.mark.chart

SOCKET = "/run/podiam/pod-ips/pod-ips.sock"


def _spec(helm: _helm.Helm, values: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = helm.template(values=values).get("DaemonSet")["spec"]["template"]["spec"]
    return spec


def test_on_by_default_as_a_reader_of_the_cni_results_alone(helm: _helm.Helm) -> None:
    spec = _spec(helm)
    assert [c["name"] for c in spec["containers"]] == ["proxy", "proxy-pod-ips"]
    assert sorted(c["name"] for c in spec["containers"])[0] == "proxy"  # the kubelet's order of container statuses
    reader = _helm.container({"spec": {"template": {"spec": spec}}}, "proxy-pod-ips")
    assert reader["args"] == ["--serve-pod-ips"]
    env = _helm.env_of(reader)
    assert env["PODIAM_PROXY_POD_IPS_SOCKET"] == SOCKET and env["PODIAM_PROXY_CNI_RESULTS_DIR"] == "/host/cni-results"
    assert env["PODIAM_PROXY_CNI_NETWORKS"] == ".*"
    # User 0 only to read a folder that is root's: no capability, nothing to escalate to, nothing to write.
    assert reader["securityContext"] == {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
                                         "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}}
    assert reader["volumeMounts"] == [{"name": "cni-results", "mountPath": "/host/cni-results", "readOnly": True},
                                      {"name": "pod-ips", "mountPath": "/run/podiam/pod-ips"}]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cni-results"]["hostPath"] == {"path": "/var/lib/cni/results", "type": "DirectoryOrCreate"}
    assert volumes["pod-ips"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    # The proxy keeps its own user and capabilities; it only gets the socket, read-only.
    proxy = _helm.container({"spec": {"template": {"spec": spec}}}, "proxy")
    assert _helm.env_of(proxy)["PODIAM_PROXY_POD_IPS_SOCKET"] == SOCKET
    assert {"name": "pod-ips", "mountPath": "/run/podiam/pod-ips", "readOnly": True} in proxy["volumeMounts"]
    assert "cni-results" not in {m["name"] for m in proxy["volumeMounts"]}
    assert proxy["securityContext"]["runAsUser"] == 10001


def test_off_leaves_the_proxy_as_it_was(helm: _helm.Helm) -> None:
    spec = _spec(helm, {"proxy": {"podIps": {"enabled": False}}})
    assert [c["name"] for c in spec["containers"]] == ["proxy"]
    assert {v["name"] for v in spec["volumes"]}.isdisjoint({"cni-results", "pod-ips"})
    assert "PODIAM_PROXY_POD_IPS_SOCKET" not in _helm.env_of(spec["containers"][0])


def test_a_cache_folder_elsewhere_and_only_some_networks(helm: _helm.Helm) -> None:
    spec = _spec(helm, {"proxy": {"podIps": {"cniResultsDir": "/run/cni/results", "cniNetworks": "k8s-pod-network"}}})
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cni-results"]["hostPath"]["path"] == "/run/cni/results"
    reader = _helm.container({"spec": {"template": {"spec": spec}}}, "proxy-pod-ips")
    assert _helm.env_of(reader)["PODIAM_PROXY_CNI_NETWORKS"] == "k8s-pod-network"


@pytest.mark.parametrize("values", [{"cniResultsDir": "var/lib/cni/results"}, {"cniNetworks": ""}, {"enable": True}])
def test_the_schema_refuses(helm: _helm.Helm, values: dict[str, Any]) -> None:
    with pytest.raises(_helm.HelmError) as error:
        helm.template(values={"proxy": {"podIps": values}})
    assert "don't meet the specifications of the schema" in error.value.output
