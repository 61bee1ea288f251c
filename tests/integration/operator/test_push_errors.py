"""A failing push, in the real operator's log, says what to fix: real proxy, real operator, test PKI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metadata_proxy import wire
from localcluster.controlplane import ControlPlane
from localcluster import moto, processes
from localcluster import stack as stacks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    # Its own stack: these tests break the proxy's certificate and restart the operator.
    running = stacks.Stack(controlplane, sts, tmp_path_factory.mktemp("push-errors"), nodes=1)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _wait_log(process: processes.ManagedProcess, text: str, timeout: float = 30) -> str:
    def found() -> str | None:
        return next((line for line in process.log().splitlines() if text in line), None)

    try:
        return stacks.wait_for(found, timeout, f"{text!r} in {process.name}'s log", interval=0.2)
    except TimeoutError as error:
        raise TimeoutError(f"{error}\n--- log tail ---\n{process.log()[-4000:]}") from None


def test_a_proxy_certificate_without_the_server_name_is_explained_and_recovery_logged(stack: stacks.Stack) -> None:
    assert stack.pki is not None
    node, operator = stack.nodes[0], stack.operator
    # The proxies' certificate as a Kiam user's agent.json would make it: without podiam-proxy in "hosts".
    stack.pki.issue("server", "kiam-agent", common_name="Kiam Agent")
    stack.restart_proxy(node)  # the operator's next connection sees the new certificate
    line = _wait_log(operator, f"push to the proxy on node {node.name} failed")
    assert f"it does not carry the DNS name {wire.PROXY_SERVER_NAME!r} that the operator verifies" in line
    assert 'agent.json "hosts"' in line
    # Fixed: the same worker gets through and says so.
    stack.pki.issue("server", wire.PROXY_SERVER_NAME, common_name=wire.PROXY_SERVER_NAME)
    stack.restart_proxy(node)
    _wait_log(operator, f"proxy on node {node.name} reachable again")
    stack.wait_proxies_ready()


def test_a_client_certificate_naming_someone_else_is_explained(stack: stacks.Stack) -> None:
    assert stack.pki is not None
    stack.operator.stop()
    wrong = stack.start_operator(env={"PODIAM_TLS_CLIENT_CERT_FILE": str(stack.pki.other_identity.cert),
                                      "PODIAM_TLS_CLIENT_KEY_FILE": str(stack.pki.other_identity.key)})
    try:
        line = _wait_log(wrong, "the proxy refused the operator's client certificate: it must name the proxy's --operator-identity")
        assert "PODIAM_TLS_OPERATOR_IDENTITY" in line
    finally:
        wrong.stop()
        stack.start_operator()


def test_a_client_certificate_of_another_ca_is_hinted_at(stack: stacks.Stack) -> None:
    assert stack.pki is not None
    stack.operator.stop()
    foreign = stack.start_operator(env={"PODIAM_TLS_CLIENT_CERT_FILE": str(stack.pki.foreign.cert),
                                        "PODIAM_TLS_CLIENT_KEY_FILE": str(stack.pki.foreign.key)})
    try:
        line = _wait_log(foreign, f"push to the proxy on node {stack.nodes[0].name} failed")
        assert "refuses the operator's client certificate in the TLS handshake: its CA is not in the proxies' CA file" in line, line
    finally:
        foreign.stop()
        stack.start_operator()
