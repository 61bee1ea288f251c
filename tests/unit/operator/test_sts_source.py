"""The real aiobotocore source, without AWS: no client before the first call, and "no credentials" is never final.

Its endpoint is a closed loopback port and the metadata service is disabled,
so nothing leaves the machine: a call either finds no credentials, or finds
them and then fails to connect.
"""

from __future__ import annotations

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
        assert source._open == {}  # a standby never gets this far: entering costs no AWS lookup
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
