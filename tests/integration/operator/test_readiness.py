"""/readyz of real operator processes: active, standby, broken TLS, stuck at start-up."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.support import ports, processes
from tests.support import stack as stacks

pytestmark = pytest.mark.integration


def readyz(process: processes.ManagedProcess) -> tuple[int, str]:
    url = process.metrics_url.replace("/metrics", "/readyz")  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_readyz(process: processes.ManagedProcess, status: int, start: str, timeout: float = 30) -> str:
    def check() -> str | None:
        code, text = readyz(process)
        return text if code == status and text.startswith(start) else None

    try:
        return stacks.wait_for(check, timeout, f"{process.name} /readyz {status} {start!r}", interval=0.2)
    except TimeoutError as error:
        raise TimeoutError(f"{error}; now: {readyz(process)}") from None


def test_the_active_replica_is_ready_once_it_pushes(stack: stacks.Stack) -> None:
    text = wait_readyz(stack.operator, 200, "ready: active")
    assert f"{len(stack.nodes)} proxies known, {len(stack.nodes)} in sync" in text
    assert "TLS: TLS mode secrets" in text


def test_a_standby_is_ready_and_says_it_stands_by(stack: stacks.Stack) -> None:
    active = stack.operator
    standby = stack.start_operator()
    try:
        text = wait_readyz(standby, 200, "ready: standby")
        assert f"active replica {active.env['POD_ID']}" in text
        assert readyz(active)[0] == 200
    finally:
        standby.stop()


def test_broken_tls_makes_the_replica_unready_with_the_reason(stack: stacks.Stack) -> None:
    active = stack.operator
    broken = stack.start_operator(env={"PODIAM_TLS_CA_FILE": str(stack.workdir / "no-such-ca.pem")})
    try:
        text = wait_readyz(broken, 503, "not ready: TLS: ")
        assert "no-such-ca.pem" in text.splitlines()[0]
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
        text = wait_readyz(cut_off, 503, "not ready: starting: pushing this operator's own pods' entries and asking STS who it is")
        stacks.wait_for(lambda: "GetCallerIdentity failed (EndpointConnectionError" in readyz(cut_off)[1], 30,
                        "the STS failure on /readyz")
        assert "the operator's own AWS identity is unknown: GetCallerIdentity failed (EndpointConnectionError" in cut_off.log()
        with urllib.request.urlopen(cut_off.liveness_url, timeout=5) as response:  # type: ignore[attr-defined]
            assert response.status == 200, text
    finally:
        cut_off.stop()
        stack.start_operator()
        wait_readyz(stack.operator, 200, "ready: active", timeout=60)
