"""The control port's mutual TLS: a server context that follows its files, and the peer check.

An ``ssl.SSLContext`` cannot drop a CA or be rebuilt in place, and asyncio
binds a listener to the context it was started with. So the listener keeps
its first context, whose server-name callback (called on every handshake,
with ``None`` when the client sends no SNI) moves each new connection onto
the newest context; the watcher builds a new one whenever the files change.
Connections already open keep the context they started with.

A file set that fails to load (half-rotated, key not matching) is reported
and the last good context stays in use.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metadata_proxy import wire

logger = logging.getLogger(__name__)

_Signature = tuple[tuple[int, int, int, int], ...]


def _signature(paths: tuple[Path, ...]) -> _Signature:
    # stat() follows the ..data symlinks of a mounted Secret to the new files.
    result = []
    for path in paths:
        st = os.stat(path)
        result.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(result)


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """The DER element at ``at``: (its tag, where its content starts, where it ends)."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[at:at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _not_after(path: Path) -> float:
    """notAfter of the first certificate in ``path`` (Unix time).

    Read from the DER by hand (Certificate > TBSCertificate > Validity, RFC 5280 4.1) rather than with
    cryptography: that library costs the proxy 8 MiB of memory, and only a token signed with an EC
    key needs it (_sa_tokens imports it for the first EC key a token names; RSA keys need none).
    """
    text = path.read_text()
    begin = text.index("-----BEGIN CERTIFICATE-----") + len("-----BEGIN CERTIFICATE-----")
    der = base64.b64decode("".join(text[begin:text.index("-----END CERTIFICATE-----", begin)].split()), validate=True)
    _, at, _ = _element(der, 0)  # Certificate
    _, at, _ = _element(der, at)  # TBSCertificate
    tag, _, end = _element(der, at)
    if tag == 0xA0:  # [0] version
        at = end
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, at = _element(der, at)
    tag, at, _ = _element(der, at)  # Validity
    _, _, at = _element(der, at)  # notBefore
    tag, start, end = _element(der, at)  # notAfter: UTCTime (YY, 1950-2049) or GeneralizedTime
    stamp = der[start:end].decode("ascii")
    if tag == 0x17:
        stamp = ("19" if int(stamp[:2]) >= 50 else "20") + stamp
    elif tag != 0x18:
        raise ValueError(f"not a certificate: notAfter has DER tag {tag:#x}")
    moment = datetime.datetime.strptime(stamp, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


class ServerTLS:
    def __init__(
        self,
        cert: Path,
        key: Path,
        ca: Path,
        on_load: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self.paths = (cert, key, ca)
        self._on_load = on_load
        self._signature: _Signature | None = None
        self.current = self._build()  # fails loudly at start-up: no control port without TLS
        self.listener_context = self.current

    def _build(self) -> ssl.SSLContext:
        cert, key, ca = self.paths
        signature = _signature(self.paths)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
        context.load_cert_chain(str(cert), str(key))
        context.sni_callback = self._select
        self._signature = signature
        expiries = {"cert": _not_after(cert), "ca": _not_after(ca)}
        if self._on_load:
            self._on_load(expiries)
        logger.info(
            "TLS files loaded",
            extra={"cert": str(cert), "ca": str(ca), "cert_not_after": wire.rfc3339(datetime.datetime.fromtimestamp(
                expiries["cert"], datetime.timezone.utc))},
        )
        return context

    def _select(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext) -> None:
        if context is not self.current:
            sslobj.context = self.current

    def reload_if_changed(self) -> bool:
        """Rebuild the context if a file changed; True when a new one is in use."""
        try:
            if _signature(self.paths) == self._signature:
                return False
            self.current = self._build()
            return True
        except (OSError, ssl.SSLError, ValueError) as error:
            # Keep serving with the last good files; the next check retries.
            logger.error("TLS files changed but could not be loaded; keeping the previous ones", extra={"error": str(error)})
            raise ReloadFailed(str(error)) from error

    async def watch(self, interval: float, on_result: Callable[[str], None] | None = None) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self.reload_if_changed() and on_result:
                    on_result("reloaded")
            except ReloadFailed:
                if on_result:
                    on_result("failed")


class ReloadFailed(Exception):
    pass


def peer_identities(peercert: dict[str, Any] | None) -> set[str]:
    """The CN(s) and DNS SANs of a verified peer certificate (``getpeercert()`` form)."""
    if not peercert:
        return set()
    names = {value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names |= {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    return names
