"""charts/podiam installed with helm on the local cluster's real nodes, as a user installs it.

The only values set are the ones a user sets on EKS: the images (built here
and loaded into the nodes), ``operator.assumeRoleArn``, the STS endpoint
(moto, through the nodes' relay: this machine has no route to AWS) and
``proxy.host.interface`` (the nodes run the CNI bridge plugin, so pods are
behind ``cni0``). Everything else is the chart's default: TLS ``auto``, two
operator replicas on the pod network with the node's identity through their
proxy, the proxy DaemonSet with its iptables rule.
"""

from __future__ import annotations

import base64
import copy
import json
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metadata_proxy import wire
from localcluster import helm as _helm
from localcluster.controlplane import cluster as clusters
from localcluster.controlplane import controlplane, network
from localcluster import guide
from localcluster import certs
from localcluster import proxy as proxy_support

OPERATOR_ROLE_ARN = f"arn:aws:iam::{clusters.ACCOUNT_ID}:role/podiam-operator"
CHAIN = "PODIAM-PROXY"
CC_CHAIN = "PODIAM-CONTAINER-CREDS"  # the container-credentials path's (nat PREROUTING and OUTPUT)


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, maps merged key by key."""
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def user_values(cluster: clusters.Cluster, sts_url: str) -> dict[str, Any]:
    images = cluster.images
    return {
        "operator": {
            "image": {"repository": images["podiam-operator"].repository, "tag": images["podiam-operator"].tag},
            "assumeRoleArn": OPERATOR_ROLE_ARN,
            "sts": {"endpointUrl": cluster.url(sts_url), "region": cluster.region},
        },
        "proxy": {
            "image": {"repository": images["podiam-proxy"].repository, "tag": images["podiam-proxy"].tag},
            "host": {"interface": network.POD_BRIDGE},
        },
    }


class Release:
    """``helm install podiam ./charts/podiam -n podiam-system --create-namespace`` and what follows."""

    def __init__(self, cluster: clusters.Cluster, helm: _helm.Helm, sts_url: str, *, name: str = "podiam",
                 namespace: str = "podiam-system", values: Mapping[str, Any] | None = None,
                 values_files: Sequence[Path] = ()) -> None:
        self.cluster = cluster
        self.plane = cluster.plane
        self.helm = helm
        self.name = name
        self.namespace = namespace
        self.values = merged(user_values(cluster, sts_url), values or {})
        self.values_files = list(values_files)
        self.installed_at = 0.0
        # Every address an operator pod of this release had: the node identity is theirs (see guide.node_role_leaks).
        self.operator_ips: set[str] = set()

    @property
    def fullname(self) -> str:
        return self.name if "podiam" in self.name else f"{self.name}-podiam"

    def _helm(self, *args: str, values: Mapping[str, Any] | None = None, timeout: str = "150s") -> str:
        value_args = list(self.helm._values_args(values, self.values_files)) if values is not None else []
        try:
            return self.helm.run(*args, "--namespace", self.namespace, f"--kubeconfig={self.plane.kubeconfig}",
                                 *value_args, *(["--wait", f"--timeout={timeout}"] if values is not None else [])).stdout
        finally:
            _helm._remove_temp_values(value_args)

    def install(self, timeout: str = "150s") -> str:
        """``helm install --create-namespace --wait``: returns helm's output (NOTES included)."""
        self.installed_at = time.time()
        output = self._helm("install", self.name, str(self.helm.chart), "--create-namespace", values=self.values,
                            timeout=timeout)
        self.pods("operator")  # records their addresses
        return output

    def upgrade(self, values: Mapping[str, Any], timeout: str = "150s") -> str:
        """``helm upgrade --wait`` with ``values`` laid over the current ones."""
        self.values = merged(self.values, values)
        return self._helm("upgrade", self.name, str(self.helm.chart), values=self.values, timeout=timeout)

    def uninstall(self) -> str:
        """``helm uninstall --wait``, returning only once the release's pods are gone too (foreground cascade):
        an operator pod still shutting down after its proxies went reaches the node's metadata service directly,
        and would count as a leak for the next release installed on these nodes."""
        return self.helm.run("uninstall", self.name, "--namespace", self.namespace, "--wait", "--cascade=foreground",
                             f"--kubeconfig={self.plane.kubeconfig}").stdout

    # ---- what runs --------------------------------------------------------------------

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        listed: list[dict[str, Any]] = self.plane.api(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}")["items"]
        if component == "operator":
            self.operator_ips.update(p["status"]["podIP"] for p in listed if p.get("status", {}).get("podIP"))
        return listed

    def node_role_leaks(self) -> list[dict[str, Any]]:
        """Credentials a node's metadata service gave to a pod since this release was installed, other than the
        operator's own pods (their node identity)."""
        self.pods("operator")
        return [r for r in guide.node_role_leaks(self.cluster, self.operator_ips) if r["time"] >= self.installed_at]

    def proxy_pod(self, node: str) -> dict[str, Any]:
        (found,) = [p for p in self.pods("proxy") if p["spec"].get("nodeName") == node]
        return found

    def wait_proxies_ready(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            found = [p for p in self.pods("proxy") if p["metadata"].get("deletionTimestamp") is None]
            return len(found) == len(self.cluster.nodes) and all(_ready(p) for p in found)

        controlplane.wait_until(ready, timeout, "a ready proxy on every node", interval=0.5)

    def secret(self, name: str) -> dict[str, bytes]:
        data = self.plane.api("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{name}")["data"]
        return {key: base64.b64decode(value) for key, value in data.items()}

    def proxy_status(self, node: str, directory: Path) -> wire.ProxyStatus:
        """What the node's proxy says it holds (its mutual-TLS status endpoint, with the operator's client
        certificate from its Secret: TLS auto), asked from the root namespace."""
        files = self.secret(f"{self.fullname}-operator-tls")
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in files.items():
            (directory / key).write_bytes(value)
        tls = proxy_support.client_tls_context(directory / "ca.crt", certs.CertFiles(directory / "tls.crt", directory / "tls.key"))
        port = int(self.values.get("proxy", {}).get("controlPort", 8182))
        answer = proxy_support.http_request(self.cluster.nodes[node].ip, port, "GET", wire.STATUS_PATH, tls=tls,
                                            server_hostname=self.values.get("tls", {}).get("proxyServerName", "podiam-proxy"))
        assert answer.status == 200, (answer.status, answer.text)
        return wire.ProxyStatus.model_validate_json(answer.body)

    def remove_iptables_rules(self) -> None:
        """Safety net after a test: the proxy's chains (metadata and container credentials) and their jumps gone
        from every node (the documented way is ``proxy.host.cleanupIptables``; tests/e2e/test_uninstall.py checks
        that one). The jumps carry a comment with spaces, which iptables-save quotes: shlex reads it back."""
        for member in self.cluster.nodes.values():
            rules = member.exec("iptables-save", "-t", "nat").stdout.splitlines()
            for chain in (CHAIN, CC_CHAIN):
                for rule in rules:
                    if rule.startswith("-A ") and rule.endswith(f"-j {chain}"):
                        member.exec("iptables", "-w", "5", "-t", "nat", *shlex.split(rule.replace("-A ", "-D ", 1)),
                                    check=False)
                member.exec("iptables", "-w", "5", "-t", "nat", "-F", chain, check=False)
                member.exec("iptables", "-w", "5", "-t", "nat", "-X", chain, check=False)

    def iptables_rules(self, node: str) -> list[str]:
        """The node's nat rules that mention the proxy's chain."""
        text = self.cluster.nodes[node].exec("iptables-save", "-t", "nat").stdout
        return [line for line in text.splitlines() if CHAIN in line]


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)[:4000]
