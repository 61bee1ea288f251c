"""IMDSv2 tokens: bound to the IP, expiring, not forgeable; the TTL header's grammar."""

from __future__ import annotations

import pytest

from metadata_proxy import _tokens
from tests.unit.proxy.conftest import Clock

pytestmark = pytest.mark.unit


def test_a_token_is_valid_for_its_ip_until_it_expires(clock: Clock) -> None:
    issuer = _tokens.TokenIssuer(clock=clock)
    token = issuer.issue("10.0.0.1", 60)
    issuer.validate("10.0.0.1", token)
    clock.now += 59
    issuer.validate("10.0.0.1", token)
    clock.now += 2
    with pytest.raises(_tokens.InvalidToken, match="expired"):
        issuer.validate("10.0.0.1", token)


def test_a_token_is_worthless_from_another_ip_or_another_process(clock: Clock) -> None:
    token = _tokens.TokenIssuer(clock=clock).issue("10.0.0.1", 60)
    with pytest.raises(_tokens.InvalidToken, match="invalid"):
        _tokens.TokenIssuer(clock=clock).validate("10.0.0.1", token)  # a restarted proxy
    issuer = _tokens.TokenIssuer(clock=clock)
    with pytest.raises(_tokens.InvalidToken, match="invalid"):
        issuer.validate("10.0.0.2", issuer.issue("10.0.0.1", 60))


@pytest.mark.parametrize("token", ["", "abc", "123", "x.y", "99999999999999.abc", "１２３.abc"])
def test_malformed_tokens(token: str, clock: Clock) -> None:
    with pytest.raises(_tokens.InvalidToken):
        _tokens.TokenIssuer(clock=clock).validate("10.0.0.1", token)


def test_extending_a_token_breaks_it(clock: Clock) -> None:
    issuer = _tokens.TokenIssuer(clock=clock)
    expiry, _, mac = issuer.issue("10.0.0.1", 60).partition(".")
    with pytest.raises(_tokens.InvalidToken, match="invalid"):
        issuer.validate("10.0.0.1", f"{int(expiry) + 3600}.{mac}")


@pytest.mark.parametrize("header,ttl", [("1", 1), ("21600", 21600), (" 300 ", 300)])
def test_ttl_accepted(header: str, ttl: int) -> None:
    assert _tokens.parse_ttl(header) == ttl


@pytest.mark.parametrize("header", [None, "", "0", "21601", "-1", "1.5", "abc", "１０", "9999999999"])
def test_ttl_refused(header: str | None) -> None:
    with pytest.raises(ValueError):
        _tokens.parse_ttl(header)
