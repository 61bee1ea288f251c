"""The real aiobotocore source, without AWS: no client before the first call, and "no credentials" is never final;
one translation of STS's errors; a replaced client closes at once.

Its endpoint is a closed loopback port and the metadata service is disabled,
so nothing leaves the machine: a call either finds no credentials, or finds
them and then fails to connect. The clients' tests give the source fake
clients instead of aiobotocore's.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from podiam_operator._kits import sts
from localcluster import ports

pytestmark = pytest.mark.unit


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never a real 169.254.169.254
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


async def test_no_client_before_the_first_call_and_no_credentials_are_looked_up_again(
    no_credentials: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = f"http://127.0.0.1:{ports.free_port()}"  # nothing listens there
    async with sts.AioBotocoreSource(region="us-east-1", endpoint_url=endpoint, timeout=1) as source:
        assert source._base is None and source._chained is None  # a standby never gets this far: entering costs no AWS lookup
        with pytest.raises(sts.StsError) as raised:
            await source.caller_identity()
        assert raised.value.code == "NoCredentialsError" and raised.value.retryable
        assert "node's role through its node's proxy" in raised.value.message  # what to check, in the log and /readyz
        # Credentials appear later (the operator's own entry reached its node's proxy, say):
        # the next call resolves the chain again instead of keeping a client without any.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE000000000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
        with pytest.raises(sts.StsError) as raised:
            await source.caller_identity()
        assert raised.value.code == "EndpointConnectionError"


@pytest.mark.parametrize(("code", "status", "retryable"), [
    ("Throttling", 400, True),
    ("SomethingNew", 429, True),  # too many requests, whatever the code says
    ("ServiceUnavailable", 503, True),
    ("InternalFailure", 500, True),
    ("AccessDenied", 403, False),
    ("ExpiredToken", 400, False),
])
def test_one_translation_of_stss_errors_for_every_action(code: str, status: int, retryable: bool) -> None:
    response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = sts.client_error(response, "fallback")
    assert (error.code, error.message, error.status, error.retryable) == (code, "m", status, retryable)
    assert sts.client_error({}, "fallback").code == "Unknown" and sts.client_error({}, "fallback").message == "fallback"


class FakeClient:
    """An STS client: AssumeRole answers credentials that expire within ``lifetime`` seconds."""

    def __init__(self, name: str, lifetime: float, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.lifetime = lifetime
        self.gate = gate
        self.closed = False
        self.calls: list[str] = []

    async def assume_role(self, **params: Any) -> dict[str, Any]:
        assert not self.closed, f"{self.name}: a call on a closed client"
        self.calls.append(params["RoleArn"])
        if self.gate is not None and params["RoleArn"].endswith("/slow"):
            await self.gate.wait()
        expiration = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self.lifetime)
        return {"Credentials": {"AccessKeyId": f"ASIA{len(self.calls)}", "SecretAccessKey": "s", "SessionToken": "t",
                                "Expiration": expiration}}


class FakeCreator:
    def __init__(self, client: FakeClient) -> None:
        self.client = client

    async def __aenter__(self) -> FakeClient:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        self.client.closed = True


def chained_source(monkeypatch: pytest.MonkeyPatch, gate: asyncio.Event | None = None) -> tuple[sts.AioBotocoreSource, list[FakeClient]]:
    """An assumeRoleArn source whose session always needs renewing (it expires within 900 s): a new chained client each call."""
    source = sts.AioBotocoreSource(region="us-east-1", endpoint_url=None, timeout=1, assume_role_arn="arn:aws:iam::1:role/hub")
    made: list[FakeClient] = []

    def creator(region: str, credentials: sts.Credentials | None = None) -> FakeCreator:
        made.append(FakeClient("base" if credentials is None else f"chained-{len(made)}", lifetime=600, gate=gate))
        return FakeCreator(made[-1])

    monkeypatch.setattr(source, "_creator", creator)
    return source, made


async def test_a_replaced_chained_client_is_closed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    source, made = chained_source(monkeypatch)
    async with source:
        await source.assume_role(sts.AssumeRequest("arn:aws:iam::1:role/pod", "s", 900))
        first = made[-1]
        assert first.name.startswith("chained") and not first.closed
        await source.assume_role(sts.AssumeRequest("arn:aws:iam::1:role/pod", "s", 900))
        assert first.closed and not made[-1].closed  # replaced, and idle: closed now, not at shutdown
        assert not made[0].closed  # the base client stays
    assert all(client.closed for client in made)


async def test_a_replaced_client_with_a_call_in_flight_closes_when_the_call_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = asyncio.Event()
    source, made = chained_source(monkeypatch, gate)
    async with source:
        slow = asyncio.ensure_future(source.assume_role(sts.AssumeRequest("arn:aws:iam::1:role/slow", "s", 900)))
        while not any(c.calls for c in made if c.name.startswith("chained")):
            await asyncio.sleep(0)
        first = made[-1]
        await source.assume_role(sts.AssumeRequest("arn:aws:iam::1:role/pod", "s", 900))
        assert made[-1] is not first and not first.closed  # its call is still in flight
        gate.set()
        await slow
        assert first.closed
