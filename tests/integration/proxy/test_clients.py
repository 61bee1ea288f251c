"""Unmodified botocore and AWS CLI get the pushed credentials from a real proxy, and use them against moto's STS."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from metadata_proxy import wire
from tests.integration.proxy.conftest import (
    BOTOCORE_SCRIPT, POD_IP, ProxyFactory, assumed_role, aws_cli, botocore_credentials, client_env,
)
from localcluster import moto
from localcluster.proxy import pod_entry, role_credentials

pytestmark = pytest.mark.integration


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == ",".join(sorted(wanted.split(","))):
            return float(match.group(2))
    return 0.0


@pytest.mark.parametrize("mode", ["imdsv2", "imdsv2-required"])
def test_botocore_gets_the_pushed_credentials_through_imdsv2(start_proxy: ProxyFactory, sts: moto.StsFront, tmp_path: Path, mode: str) -> None:
    proxy = start_proxy(*(["--require-imdsv2"] if mode == "imdsv2-required" else []))
    creds, _ = assumed_role(sts, "app-role")
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=[creds], pods=[pod_entry(POD_IP, creds.key)]))

    got = botocore_credentials(proxy, tmp_path)
    assert got["method"] == "iam-role"
    assert (got["access_key"], got["secret_key"], got["token"]) == (
        creds.access_key_id, creds.secret_access_key.get_secret_value(), creds.session_token.get_secret_value(),
    )
    metrics = proxy.metrics()
    assert metric(metrics, "podiam_proxy_imdsv2_tokens_issued_total") >= 1
    assert metric(metrics, "podiam_proxy_metadata_requests_total", route="credentials", status="200") >= 1
    assert metric(metrics, "podiam_proxy_metadata_requests_total", route="token", status="404") == 0


def test_botocore_falls_back_to_imdsv1(start_proxy: ProxyFactory, sts: moto.StsFront, tmp_path: Path) -> None:
    proxy = start_proxy("--disable-imdsv2")
    creds, _ = assumed_role(sts, "app-role")
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=[creds], pods=[pod_entry(POD_IP, creds.key)]))

    got = botocore_credentials(proxy, tmp_path)
    assert got["method"] == "iam-role" and got["access_key"] == creds.access_key_id
    metrics = proxy.metrics()
    assert metric(metrics, "podiam_proxy_metadata_requests_total", route="token", status="404") >= 1
    assert metric(metrics, "podiam_proxy_imdsv2_tokens_issued_total") == 0
    assert metric(metrics, "podiam_proxy_metadata_requests_total", route="credentials", status="200") >= 1


@pytest.mark.parametrize("flags", [[], ["--disable-imdsv2"]], ids=["imdsv2", "imdsv1-only"])
def test_aws_cli_calls_sts_as_the_pods_role(start_proxy: ProxyFactory, sts: moto.StsFront, tmp_path: Path, flags: list[str]) -> None:
    proxy = start_proxy(*flags)
    creds, assumed_arn = assumed_role(sts, "reporting-role")
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=[creds], pods=[pod_entry(POD_IP, creds.key)]))

    done = aws_cli(proxy, tmp_path, "sts", "get-caller-identity", "--endpoint-url", sts.url, "--output", "json")
    assert done.returncode == 0, done.stderr
    identity = json.loads(done.stdout)
    assert identity["Arn"] == assumed_arn
    assert identity["Arn"].startswith(f"arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/reporting-role/")


def test_no_entry_for_the_pod_means_no_credentials(start_proxy: ProxyFactory, sts: moto.StsFront, tmp_path: Path) -> None:
    proxy = start_proxy("--credential-wait", "200ms")
    creds, _ = assumed_role(sts, "app-role")
    # The node holds credentials, for another pod's IP only.
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=[creds], pods=[pod_entry("10.9.9.9", creds.key)]))
    assert botocore_credentials(proxy, tmp_path).get("method") is None
    done = aws_cli(proxy, tmp_path, "sts", "get-caller-identity", "--endpoint-url", sts.url)
    assert done.returncode != 0 and "Unable to locate credentials" in done.stderr


def test_a_pod_whose_entry_arrives_while_botocore_asks_gets_credentials(start_proxy: ProxyFactory, sts: moto.StsFront, tmp_path: Path) -> None:
    """The guide's gatewayTimeoutCreation: the first request waits for the push instead of failing."""
    proxy = start_proxy()  # default --credential-wait 0.8s
    creds, _ = assumed_role(sts, "app-role")
    # Role credentials go out when the pod is scheduled; the IP entry follows.
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=[creds]))

    client = subprocess.Popen([sys.executable, "-c", BOTOCORE_SCRIPT], env=client_env(proxy, tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while metric(proxy.metrics(), "podiam_proxy_credential_waits_total") < 1:  # botocore is now waiting
            assert time.monotonic() < deadline and client.poll() is None, client.stderr.read() if client.stderr else ""
            time.sleep(0.02)
        time.sleep(0.2)
        proxy.push_changes(wire.Changes(upsert_pods=[pod_entry(POD_IP, creds.key)]))
        out, err = client.communicate(timeout=30)
    finally:
        client.kill()
    got = json.loads(out)
    assert got.get("access_key") == creds.access_key_id, err
    metrics = proxy.metrics()
    assert metric(metrics, "podiam_proxy_credential_lookups_total", result="waited_hit") >= 1
    assert metric(metrics, "podiam_proxy_credential_lookups_total", result="miss") == 0


def test_proxies_of_two_nodes_share_ports_and_hold_their_own_state(start_proxy: ProxyFactory, sts: moto.StsFront, tmp_path: Path) -> None:
    first = start_proxy(node_name="node-a")
    second = start_proxy(host="127.0.0.39", metadata_port=first.metadata_port, control_port=first.control_port,
                         health_port=first.health_port, node_name="node-b")
    a, _ = assumed_role(sts, "role-a")
    b, _ = assumed_role(sts, "role-b")
    first.push_snapshot(wire.Snapshot(generation=1, roles=[a], pods=[pod_entry(POD_IP, a.key)]))
    second.push_snapshot(wire.Snapshot(generation=9, roles=[b], pods=[pod_entry(POD_IP, b.key)]))
    assert botocore_credentials(first, tmp_path)["access_key"] == a.access_key_id
    assert botocore_credentials(second, tmp_path)["access_key"] == b.access_key_id
    assert (first.status().node_name, second.status().node_name) == ("node-a", "node-b")
    assert second.status().snapshot_generation == 9


def test_a_restarted_proxy_is_unready_and_serves_nothing_until_its_snapshot(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = start_proxy("--credential-wait", "0")
    role = role_credentials("k1", "r1")
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=[role], pods=[pod_entry(POD_IP, "k1")]))
    assert proxy.health("/readyz").status == 200
    proxy.kill()
    proxy.start()
    assert proxy.health("/readyz").status == 503
    assert proxy.status() == wire.ProxyStatus(node_name="node-test", ready=False, snapshot_generation=None, roles=0, pods=0)
    assert proxy.imds_get("/latest/meta-data/iam/security-credentials/", POD_IP).status == 404
    proxy.push_snapshot(wire.Snapshot(generation=2, roles=[role], pods=[pod_entry(POD_IP, "k1")]))
    assert proxy.health("/readyz").status == 200
    assert proxy.imds_get("/latest/meta-data/iam/security-credentials/r1", POD_IP).status == 200


def test_concurrent_pushes_and_reads_never_mix_pods(start_proxy: ProxyFactory) -> None:
    """Pods on many IPs read while the operator keeps replacing the node's state: each only ever sees its own key."""
    proxy = start_proxy("--credential-wait", "0")
    ips = [f"127.0.1.{i}" for i in range(1, 9)]
    roles = {ip: role_credentials(f"k{i}", f"r{i}") for i, ip in enumerate(ips)}
    entries = {ip: pod_entry(ip, roles[ip].key) for ip in ips}
    proxy.push_snapshot(wire.Snapshot(generation=0, roles=list(roles.values()), pods=list(entries.values())))
    stop = threading.Event()
    problems: list[str] = []

    def reader(ip: str) -> None:
        while not stop.is_set():
            result = proxy.imds_get(f"/latest/meta-data/iam/security-credentials/{roles[ip].role_name}", ip)
            if result.status == 200 and json.loads(result.body)["AccessKeyId"] != roles[ip].access_key_id:
                problems.append(f"{ip} got someone else's credentials")

    threads = [threading.Thread(target=reader, args=(ip,)) for ip in ips]
    for thread in threads:
        thread.start()
    try:
        for generation in range(1, 30):
            proxy.push_snapshot(wire.Snapshot(generation=generation, roles=list(roles.values()), pods=list(entries.values())))
            proxy.push_changes(wire.Changes(remove_pods=[wire.PodRemoval(ip=ip, uid=e.uid) for ip, e in entries.items()]))
            proxy.push_changes(wire.Changes(upsert_pods=list(entries.values())))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert problems == []


def test_logs_hold_no_secrets(start_proxy: ProxyFactory, sts: moto.StsFront, tmp_path: Path) -> None:
    proxy = start_proxy("--log-level", "debug")
    creds, _ = assumed_role(sts, "app-role")
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=[creds], pods=[pod_entry(POD_IP, creds.key)]))
    proxy.push_changes(wire.Changes(upsert_roles=[role_credentials("k2", "r2", secret_access_key="REJECTED-SECRET", expires_in=10)]))
    proxy.control("POST", wire.CHANGES_PATH, b'{"upsert_roles": [{"secret_access_key": "INVALID-SECRET"}]}')
    botocore_credentials(proxy, tmp_path)
    proxy.stop()
    log = proxy.log()
    assert "push applied" in log
    for secret in (creds.secret_access_key.get_secret_value(), creds.session_token.get_secret_value(), "REJECTED-SECRET", "INVALID-SECRET"):
        assert secret not in log


def test_rotated_certificates_are_picked_up_without_a_restart(tmp_path: Path) -> None:
    import datetime
    import socket

    from localcluster import certs as certs_support
    from localcluster.proxy import ProxyProcess, client_tls_context

    pki = certs_support.make_pki(tmp_path / "pki")
    proxy = ProxyProcess(tmp_path, pki, "127.0.0.38", args=["--tls-reload-interval", "0.1"]).start()
    try:
        def server_cert_der() -> bytes:
            with socket.create_connection((proxy.host, proxy.control_port), timeout=5) as sock:
                with client_tls_context(pki.ca, pki.operator).wrap_socket(sock, server_hostname=wire.PROXY_SERVER_NAME) as tls:
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    return der

        before = server_cert_der()
        expiry_before = metric(proxy.metrics(), "podiam_proxy_tls_certificate_expiry_timestamp_seconds", file="cert")
        assert expiry_before > time.time()
        not_after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7)
        pki.issue("server", wire.PROXY_SERVER_NAME, common_name=wire.PROXY_SERVER_NAME, not_after=not_after)
        proxy.process.wait_until(lambda: server_cert_der() != before, timeout=10, what="serving the renewed certificate")
        assert abs(metric(proxy.metrics(), "podiam_proxy_tls_certificate_expiry_timestamp_seconds", file="cert") - not_after.timestamp()) < 2
        assert metric(proxy.metrics(), "podiam_proxy_tls_reloads_total", outcome="reloaded") == 1
        assert proxy.push_snapshot(wire.Snapshot(generation=1)).applied == 0
        assert proxy.status().ready
    finally:
        proxy.stop()
