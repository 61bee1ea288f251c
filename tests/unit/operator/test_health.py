"""/readyz and /metrics of the operator's HTTP listener, through aiohttp's test client, with a stand-in engine."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from aiohttp import test_utils

from podiam_operator import _health, _metrics
from podiam_operator._kits import push
from podiam_operator.tls import report

pytestmark = pytest.mark.unit

TLS_OK = report.Status(ok=True, message="TLS mode secrets: client certificate CN=podiam-operator valid until 2030-01-01T00:00:00Z")


def proxy(node: str, *, synced: bool = True, last_error: str | None = None) -> push.ProxyState:
    return push.ProxyState(node, known=True, synced=synced, generation=1, entries=0, token_only=0, roles=0,
                           last_push=None, last_contact=None, last_error=last_error)


class Leadership:
    def __init__(self, peers: list[str] | Exception) -> None:
        self.peers = peers
        self.calls = 0

    async def higher_peers(self) -> list[str]:
        self.calls += 1
        if isinstance(self.peers, Exception):
            raise self.peers
        return list(self.peers)


@dataclasses.dataclass
class Engine:
    started: bool = False
    phase: str = "standby"
    leadership: Leadership | None = None
    proxies: dict[str, push.ProxyState] = dataclasses.field(default_factory=dict)
    identity_error: str | None = None
    caller_arn: str | None = None

    def proxy_states(self) -> dict[str, push.ProxyState]:
        return self.proxies


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def probe(status: report.Status = TLS_OK, engine: Engine | None = None, clock: Clock | None = None) -> _health.Probe:
    made = _health.Probe(lambda: status, clock=clock or Clock())
    made.engine = engine  # type: ignore[assignment]
    return made


async def get(made: _health.Probe, path: str = "/readyz") -> tuple[int, str, Any]:
    """The status and headers of ``path``; for /readyz, the details that went to the log instead of the body."""
    async with test_utils.TestClient(test_utils.TestServer(_health.make_app(made))) as client:
        response = await client.get(path)
        body = await response.text()
        if path != "/readyz":
            return response.status, body, response.headers
        readiness = await made.check()
        # Anyone on the network may ask: a status word, never the details (counts, nodes, subjects, ARNs).
        assert body == readiness.summary + "\n"
        assert body in ("ready: active\n", "ready: standby\n", "not ready: starting\n", "not ready: TLS\n",
                        "not ready: AWS identity unknown\n"), body
        return response.status, readiness.text, response.headers


async def test_readyz_shows_a_status_word_and_logs_the_details_when_they_change(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(started=True, phase="active", proxies={"node-a": proxy("node-a", last_error="refused")},
                    caller_arn="arn:aws:sts::123456789012:assumed-role/NodeRole/i-0abc")
    made = probe(engine=engine)
    caplog.set_level(logging.INFO, logger=_health.__name__)
    async with test_utils.TestClient(test_utils.TestServer(_health.make_app(made))) as client:
        for _ in range(3):
            response = await client.get("/readyz")
            assert (response.status, await response.text()) == (200, "ready: active\n")
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("readiness: ")]
        assert len(logged) == 1  # once per change
        assert "pushes failing to node-a" in logged[0] and "NodeRole" in logged[0] and "CN=podiam-operator" in logged[0]
        made.tls_status = lambda: report.Status(ok=False, message="client certificate CN=podiam-operator expired")
        response = await client.get("/readyz")
        assert (response.status, await response.text()) == (503, "not ready: TLS\n")
        assert caplog.records[-1].levelname == "WARNING" and "expired" in caplog.records[-1].getMessage()


async def test_active_with_good_tls_is_ready_and_says_so() -> None:
    engine = Engine(started=True, phase="active", proxies={"n1": proxy("n1"), "n2": proxy("n2", synced=False)})
    status, text, headers = await get(probe(engine=engine))
    assert status == 200
    assert text.startswith("ready: active: 2 proxies known, 1 in sync")
    assert TLS_OK.message in text
    assert headers["X-Podiam-Role"] == "active"


async def test_failing_pushes_are_named_but_do_not_make_an_active_replica_unready() -> None:
    # One dead node must not take the operator out of its Service: the others still get pushes.
    engine = Engine(started=True, phase="active", proxies={"n1": proxy("n1", last_error="refused"), "n2": proxy("n2")})
    status, text, _ = await get(probe(engine=engine))
    assert status == 200
    assert "pushes failing to n1" in text


async def test_broken_tls_is_not_ready_and_the_body_is_the_tls_message() -> None:
    broken = report.Status(ok=False, message="the CA file /tls/ca.crt does not exist")
    status, text, headers = await get(probe(broken, Engine(started=True, phase="active")))
    assert status == 503
    assert text.splitlines()[0] == "not ready: TLS: the CA file /tls/ca.crt does not exist"
    assert headers["X-Podiam-Role"] == "active"


async def test_before_the_engine_exists_the_stage_is_reported() -> None:
    made = probe(report.Status(ok=False, message="TLS not prepared yet"))
    made.stage = "preparing TLS"
    status, text, _ = await get(made)
    assert status == 503
    assert "TLS not prepared yet" in text
    assert "starting: preparing TLS" in text


async def test_waiting_for_the_initial_listing_is_not_ready_even_with_an_active_peer() -> None:
    made = probe(engine=Engine(phase="listing", leadership=Leadership(["operator-1"])))
    made.stage = "listing the cluster failed (Refused: listing serviceaccounts: HTTP 403: forbidden); retrying"
    status, text, headers = await get(made)
    assert status == 503
    assert "starting: listing the cluster failed (Refused: listing serviceaccounts: HTTP 403" in text
    assert headers["X-Podiam-Role"] == "starting"


async def test_standalone_waiting_for_the_listing_is_not_ready() -> None:
    status, _, _ = await get(probe(engine=Engine(phase="listing", leadership=None)))
    assert status == 503


async def test_a_standby_is_ready_and_names_the_active_replica() -> None:
    status, text, headers = await get(probe(engine=Engine(phase="standby", leadership=Leadership(["operator-1"]))))
    assert status == 200
    assert text.startswith("ready: standby: active replica operator-1")
    assert headers["X-Podiam-Role"] == "standby"


async def test_a_standby_with_broken_tls_is_not_ready() -> None:
    broken = report.Status(ok=False, message="client certificate expired")
    status, text, headers = await get(probe(broken, Engine(leadership=Leadership(["operator-1"]))))
    assert status == 503
    assert "client certificate expired" in text
    assert headers["X-Podiam-Role"] == "standby"


async def test_warming_up_is_not_ready() -> None:
    status, text, _ = await get(probe(engine=Engine(phase="warming-up", leadership=Leadership([]))))
    assert status == 503
    assert "fetching the credentials" in text


async def test_the_identity_phase_says_what_sts_answered() -> None:
    engine = Engine(phase="identity", leadership=Leadership([]),
                    identity_error="GetCallerIdentity failed (NoCredentialsError: Unable to locate credentials); retrying in 4s")
    status, text, headers = await get(probe(engine=engine))
    assert status == 503 and headers["X-Podiam-Role"] == "starting"
    assert text.startswith("not ready: starting: pushing this operator's own pods' entries and asking STS who it is")
    assert "NoCredentialsError: Unable to locate credentials" in text


async def test_an_active_replica_without_an_aws_identity_is_not_ready_and_says_why() -> None:
    engine = Engine(started=True, phase="active", identity_error="GetCallerIdentity failed (AccessDenied: no); retrying in 15s")
    status, text, headers = await get(probe(engine=engine))
    assert status == 503 and headers["X-Podiam-Role"] == "active"
    assert text.splitlines()[0] == "not ready: the operator's AWS identity is unknown: GetCallerIdentity failed (AccessDenied: no); retrying in 15s"
    engine.identity_error, engine.caller_arn = None, "arn:aws:sts::123456789012:assumed-role/NodeRole/i-0abc"
    status, text, _ = await get(probe(engine=engine))
    assert status == 200 and "AWS identity: arn:aws:sts::123456789012:assumed-role/NodeRole/i-0abc" in text


async def test_unreadable_peering_says_why() -> None:
    status, text, _ = await get(probe(engine=Engine(leadership=Leadership(RuntimeError("HTTP 403 Forbidden")))))
    assert status == 503
    assert "cannot read the peering object: HTTP 403 Forbidden" in text


async def test_peers_are_asked_at_most_every_two_seconds() -> None:
    clock = Clock()
    leadership = Leadership(["operator-1"])
    made = probe(engine=Engine(leadership=leadership), clock=clock)
    for _ in range(5):
        assert (await made.check()).ready
    assert leadership.calls == 1
    clock.now += _health.PEERS_CACHE_SECONDS + 0.1
    leadership.peers = []  # the active replica went away: no longer a standby
    assert not (await made.check()).ready
    assert leadership.calls == 2


async def test_metrics_are_served_from_the_default_registry() -> None:
    _metrics.CACHE_SIZE.set(7)
    status, text, headers = await get(probe(), "/metrics")
    assert status == 200
    assert "podiam_credentials_cached 7.0" in text
    assert headers["Content-Type"].startswith("text/plain")
