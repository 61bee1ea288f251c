"""What the proxy's health port tells anything that reaches it: a status word, counts, and never a pod or a certificate.

The health port listens on the node's IP (the kubelet probes it there, and
Prometheus scrapes it through the pod network), where every pod can reach it
too. So ``/readyz`` says a status word and nothing else (the details go to
the log), and ``/metrics`` carries counts only: no label value is an IP, a
pod, a namespace, a role or a certificate subject.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from metadata_proxy import wire
from tests.integration.proxy.conftest import ProxyFactory
from localcluster import certs, ports
from localcluster.proxy import ProxyProcess, http_request, pod_entry, role_credentials

pytestmark = pytest.mark.integration

PODS = ["127.0.73.1", "127.0.73.2"]
STRANGER = "127.0.73.9"
CREDS = "/latest/meta-data/iam/security-credentials/"


def test_readyz_says_a_status_word_and_metrics_name_no_pod(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--credential-wait", "0", "--max-connections-per-source", "2")
    assert (proxy.health("/readyz").status, proxy.health("/readyz").text) == (503, "not ready: no snapshot\n")
    roles = [role_credentials("k1", "SecretProjectRole"), role_credentials("k2", "OtherTeamRole")]
    pods = [pod_entry(PODS[0], "k1", namespace="team-a", name="billing-7f9c"), pod_entry(PODS[1], "k2", namespace="team-b", name="ledger-0")]
    proxy.push_snapshot(wire.Snapshot(generation=7, roles=roles, pods=pods))
    # Traffic that labels could have named: hits, misses, a malformed request, refused connections.
    assert proxy.imds_get(CREDS + "SecretProjectRole", PODS[0]).status == 200
    assert proxy.imds_get(CREDS, STRANGER).status == 404
    with socket.create_connection((proxy.host, proxy.metadata_port), source_address=(STRANGER, 0)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nBroken\r\n\r\n")
        sock.recv(100)
    held = [socket.create_connection((proxy.host, proxy.metadata_port), source_address=(STRANGER, 0)) for _ in range(4)]
    for sock in held:
        sock.close()

    ready = proxy.health("/readyz")
    assert (ready.status, ready.text) == (200, "ready\n")
    assert "readiness" in proxy.log()  # the details went to the log

    metrics = proxy.metrics()
    values = {value for value in re.findall(r'="([^"]*)"', metrics)}
    assert not [value for value in values if re.fullmatch(r"[0-9.:a-f]+", value) and value.count(".") == 3], values
    for secret in [*PODS, STRANGER, "team-a", "billing-7f9c", "ledger-0", "SecretProjectRole", "OtherTeamRole", "123456789012",
                   "podiam-operator", "podiam-proxy", proxy.node_name]:
        assert secret not in metrics, secret
    assert 'podiam_proxy_connections_dropped_total{port="metadata",reason="source_cap"}' in metrics


def test_the_health_port_can_listen_on_an_address_of_its_own(pki: certs.Pki, tmp_path: Path) -> None:
    # E.g. the node's loopback, for a node-local scraper: pods then reach neither /metrics nor /readyz.
    health_only = "127.0.74.1"
    port = ports.free_port_on_all(["127.0.74.2", health_only])
    proxy = ProxyProcess(tmp_path, pki, "127.0.74.2", health_port=port, args=["--health-bind-address", health_only]).start(wait=False)
    try:
        proxy.process.wait_http(f"http://{health_only}:{port}/healthz", timeout=30)
        with pytest.raises(ConnectionRefusedError):
            http_request(proxy.host, port, "GET", "/healthz")
        assert proxy.imds_get(CREDS, PODS[0]).status == 404  # the metadata port still on --bind-address
        assert json.loads(proxy.control("GET", wire.STATUS_PATH).text)["node_name"] == proxy.node_name
    finally:
        proxy.stop()
