"""IMDSv2 session tokens: bound to the caller's IP, expiring, and stateless.

A token is ``<expiry>.<mac>`` (base64url), the MAC over (source IP, expiry)
keyed with a secret drawn at start-up: validating needs no table that a pod
could grow by asking for tokens in a loop, and a restart invalidates every
token (SDKs then fetch a new one, as after an EC2 instance's reboot).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

MIN_TTL = 1
MAX_TTL = 21600


class InvalidToken(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenIssuer:
    def __init__(self, clock: Callable[[], float] = time.time, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, ip: str, expiry: int) -> str:
        digest = hmac.new(self._key, f"{ip}|{expiry}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, ip: str, ttl: int) -> str:
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"ttl {ttl} outside {MIN_TTL}-{MAX_TTL}")
        expiry = int(self._clock()) + ttl
        return f"{expiry}.{self._mac(ip, expiry)}"

    def validate(self, ip: str, token: str) -> None:
        """Raise :class:`InvalidToken` unless ``token`` was issued to ``ip`` and is unexpired."""
        expiry_text, dot, mac = token.partition(".")
        if not dot or not (expiry_text.isascii() and expiry_text.isdigit()) or len(expiry_text) > 12:
            raise InvalidToken("malformed")
        expiry = int(expiry_text)
        if not hmac.compare_digest(mac, self._mac(ip, expiry)):
            raise InvalidToken("invalid")  # forged, or issued to another IP or by a previous process
        if expiry <= self._clock():
            raise InvalidToken("expired")


def parse_ttl(header: str | None) -> int:
    """The TTL from ``X-aws-ec2-metadata-token-ttl-seconds``; ValueError with the reason otherwise."""
    if header is None:
        raise ValueError("missing X-aws-ec2-metadata-token-ttl-seconds header")
    text = header.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise ValueError(f"X-aws-ec2-metadata-token-ttl-seconds must be an integer {MIN_TTL}-{MAX_TTL}")
    ttl = int(text)
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(f"X-aws-ec2-metadata-token-ttl-seconds must be {MIN_TTL}-{MAX_TTL}, got {ttl}")
    return ttl
