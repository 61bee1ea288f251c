"""The real operator process (``python -m podiam_operator``) in ``auto`` mode: it bootstraps the PKI, the
proxies mount the Secret it made, pods get credentials, and a CA rotation costs no push."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.controlplane import ControlPlane
from tests.integration.tls import secret_volume, support
from localcluster import moto
from localcluster import stack as stacks

pytestmark = pytest.mark.integration

_PUSH_LINE = re.compile(r'^podiam_pushes_total\{kind="(?P<kind>[^"]+)",result="(?P<result>[^"]+)"\} (?P<n>[0-9.e+]+)$', re.MULTILINE)


def _pushes(stack: stacks.Stack) -> dict[str, float]:
    """Pushes by result, all kinds together."""
    totals: dict[str, float] = {}
    for match in _PUSH_LINE.finditer(stack.operator_metrics()):
        totals[match["result"]] = totals.get(match["result"], 0.0) + float(match["n"])
    return totals


@pytest.fixture
def auto_stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path: Path) -> Iterator[tuple[stacks.Stack, support.ClientFiles]]:
    running = stacks.Stack(controlplane, sts, tmp_path, nodes=2, anti_entropy=0.5)
    files = support.ClientFiles(tmp_path / "operator-tls" / "tls.crt", tmp_path / "operator-tls" / "tls.key", tmp_path / "operator-tls" / "ca.crt")
    volume: secret_volume.SecretVolume | None = None
    try:
        # The proxies need the Secret the operator makes: operator first, as
        # a DaemonSet's pods wait in ContainerCreating for their Secret.
        running.node_count = 0
        running.start(operator=False)
        running.start_operator(env={
            "PODIAM_TLS_MODE": "auto",
            "PODIAM_TLS_CLIENT_CERT_FILE": str(files.cert), "PODIAM_TLS_CLIENT_KEY_FILE": str(files.key),
            "PODIAM_TLS_CA_FILE": str(files.ca),
            "PODIAM_TLS_CHECK_INTERVAL": "0.5", "PODIAM_TLS_CA_OVERLAP": "5",
        })
        volume = secret_volume.SecretVolume(controlplane.api, stacks.PROXY_NAMESPACE, "podiam-proxy-tls", tmp_path / "proxy-tls", 0.3)
        stacks.wait_for(volume.sync, 60, "the operator to create Secret podiam-proxy-tls")
        volume.start()
        running.proxy_args = ["--tls-cert", str(volume.path("tls.crt")), "--tls-key", str(volume.path("tls.key")),
                              "--tls-ca", str(volume.path("ca.crt")), "--tls-reload-interval", "0.2"]
        for index in range(2):
            running.add_node(index)
        running.wait_proxies_ready()
        yield running, files
    except BaseException:
        running.print_operator_logs()
        raise
    finally:
        running.stop()
        if volume is not None:
            volume.stop()
        for name in ("podiam-ca", "podiam-proxy-tls", "podiam-operator-tls"):
            controlplane.api("DELETE", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/secrets/{name}")


def test_operator_in_auto_mode_serves_pods_through_a_ca_rotation(auto_stack: tuple[stacks.Stack, support.ClientFiles]) -> None:
    stack, files = auto_stack
    assert "TLS: created CA" in stack.operator.log()
    stack.create_namespace("tls-auto", ".*")
    node = stack.nodes[0]
    first_ip = stack.next_ip()
    stack.create_pod("tls-auto", "before", role="app-role", node=node, ip=first_ip)
    assert stack.wait_credentials(node, first_ip)["Code"] == "Success"
    before = _pushes(stack)
    assert before.get("ok", 0) > 0

    old_ca = files.ca.read_bytes()
    stack.cp.api("PATCH", f"/api/v1/namespaces/{stacks.PROXY_NAMESPACE}/secrets/podiam-ca",
                 {"metadata": {"annotations": {"podiam.io/rotate-ca": "now"}}})
    during: list[str] = []
    deadline = time.monotonic() + 60
    while "CA rotation complete" not in stack.operator.log():
        assert time.monotonic() < deadline, "the rotation did not complete"
        ip = stack.next_ip()
        name = f"during-{len(during)}"
        stack.create_pod("tls-auto", name, role="app-role", node=stack.nodes[len(during) % 2], ip=ip)
        during.append(ip)
        assert stack.credentials(node, first_ip) is not None
        time.sleep(0.5)
    for index, ip in enumerate(during):
        assert stack.wait_credentials(stack.nodes[index % 2], ip)["Code"] == "Success"
    time.sleep(2)  # anti-entropy rounds on the new CA only
    after = _pushes(stack)
    failed = {result: count - before.get(result, 0) for result, count in after.items() if result != "ok" and count != before.get(result, 0)}
    assert failed == {}, failed
    assert after["ok"] > before["ok"]
    assert files.ca.read_bytes() != old_ca and files.ca.read_bytes().count(b"BEGIN CERTIFICATE") == 1
    served = support.served_certificate(node.ip, stack.control_port, files.context())
    assert served.issuer.rfc4514_string() in stack.operator.log()  # the proxies present a leaf of the new CA
