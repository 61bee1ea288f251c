"""/readyz of real operator processes: active, standby, broken TLS, stuck at start-up.

The body is a status word for whoever asks; the details are in the operator's log.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from localcluster import ports, processes
from localcluster import stack as stacks

pytestmark = pytest.mark.integration


def readyz(process: processes.ManagedProcess) -> tuple[int, str]:
    url = process.metrics_url.replace("/metrics", "/readyz")  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_readyz(process: processes.ManagedProcess, status: int, word: str, timeout: float = 30) -> str:
    """Wait for /readyz to answer ``status`` and the status word ``word`` (all it says); its details from the log."""
    def check() -> bool:
        return readyz(process) == (status, word + "\n")

    try:
        stacks.wait_for(check, timeout, f"{process.name} /readyz {status} {word!r}", interval=0.2)
    except TimeoutError as error:
        raise TimeoutError(f"{error}; now: {readyz(process)}") from None
    return logged_readiness(process)


def logged_readiness(process: processes.ManagedProcess) -> str:
    """The last readiness details the operator logged (it logs them whenever they change)."""
    lines = [line for line in process.log().splitlines() if "readiness: " in line]
    return lines[-1].partition("readiness: ")[2] if lines else ""


def wait_logged_readiness(process: processes.ManagedProcess, part: str, timeout: float = 30) -> str:
    def check() -> str | None:
        readyz(process)  # the details are logged when /readyz is asked and they changed
        text = logged_readiness(process)
        return text if part in text else None

    return stacks.wait_for(check, timeout, f"{part!r} in {process.name}'s logged readiness", interval=0.2)


def test_the_active_replica_is_ready_once_it_pushes(stack: stacks.Stack) -> None:
    wait_readyz(stack.operator, 200, "ready: active")
    text = wait_logged_readiness(stack.operator, f"{len(stack.nodes)} proxies known, {len(stack.nodes)} in sync")
    assert "TLS: TLS mode secrets" in text


def test_readyz_tells_the_network_a_status_word_and_nothing_about_the_cluster(stack: stacks.Stack) -> None:
    wait_readyz(stack.operator, 200, "ready: active")
    status, body = readyz(stack.operator)
    assert (status, body) == (200, "ready: active\n")
    for secretish in ("arn:", "CN=", "proxies known", *(node.name for node in stack.nodes)):
        assert secretish not in body
    # The details are where an administrator looks.
    assert "AWS identity: arn:aws:sts::" in wait_logged_readiness(stack.operator, "AWS identity")


def test_a_standby_is_ready_and_says_it_stands_by(stack: stacks.Stack) -> None:
    active = stack.operator
    standby = stack.start_operator()
    try:
        wait_readyz(standby, 200, "ready: standby")
        assert f"active replica {active.env['POD_ID']}" in logged_readiness(standby)
        assert readyz(active)[0] == 200
    finally:
        standby.stop()


def test_broken_tls_makes_the_replica_unready_with_the_reason(stack: stacks.Stack) -> None:
    active = stack.operator
    broken = stack.start_operator(env={"PODIAM_TLS_CA_FILE": str(stack.workdir / "no-such-ca.pem")})
    try:
        wait_readyz(broken, 503, "not ready: TLS")
        text = wait_logged_readiness(broken, "no-such-ca.pem")
        assert text.startswith("not ready: TLS: ") and "no-such-ca.pem" in text.split("; ")[0]
        assert readyz(active)[0] == 200  # the active one is unaffected
    finally:
        broken.stop()


def test_a_replica_that_cannot_reach_sts_is_alive_and_stands_by(stack: stacks.Stack) -> None:
    # Its start-up handler calls no AWS, so kopf's /healthz answers (the liveness probe never kills it);
    # as a standby it asks STS nothing until it leads.
    unreachable = f"http://127.0.0.1:{ports.free_port()}"
    cut_off = stack.start_operator(env={"PODIAM_STS_ENDPOINT_URL": unreachable, "PODIAM_STS_TIMEOUT": "1", "PODIAM_STS_ATTEMPTS": "1"})
    try:
        wait_readyz(cut_off, 200, "ready: standby")
        assert "GetCallerIdentity" not in cut_off.log()
    finally:
        cut_off.stop()


def test_an_active_replica_whose_sts_fails_is_alive_not_ready_and_says_why(stack: stacks.Stack) -> None:
    active = stack.operator
    active.stop()  # the next one leads at once (a stopped replica leaves the peering object)
    unreachable = f"http://127.0.0.1:{ports.free_port()}"
    cut_off = stack.start_operator(env={"PODIAM_STS_ENDPOINT_URL": unreachable, "PODIAM_STS_TIMEOUT": "1", "PODIAM_STS_ATTEMPTS": "1"})
    try:
        text = wait_readyz(cut_off, 503, "not ready: starting")
        wait_logged_readiness(cut_off, "starting: pushing this operator's own pods' entries and asking STS who it is")
        wait_logged_readiness(cut_off, "GetCallerIdentity failed (EndpointConnectionError")
        assert "the operator's own AWS identity is unknown: GetCallerIdentity failed (EndpointConnectionError" in cut_off.log()
        with urllib.request.urlopen(cut_off.liveness_url, timeout=5) as response:  # type: ignore[attr-defined]
            assert response.status == 200, text
    finally:
        cut_off.stop()
        stack.start_operator()
        wait_readyz(stack.operator, 200, "ready: active", timeout=60)
