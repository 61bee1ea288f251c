"""The push client's TLS context, built from files and rebuilt when they change (rotated Secrets)."""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path

logger = logging.getLogger(__name__)


class TlsMaterialError(RuntimeError):
    pass


class ClientTls:
    """``context()`` is cheap: it re-reads the files at most every ``check_every`` seconds, and only if they changed."""

    def __init__(self, cert: Path, key: Path, ca: Path, *, check_every: float = 1.0) -> None:
        self.paths = (cert, key, ca)
        self.check_every = check_every
        self._context: ssl.SSLContext | None = None
        self._signature: tuple[tuple[int, int], ...] | None = None
        self._checked = 0.0
        self.version = 0  # bumped on every reload, so the HTTP client can renew its connections

    def _current_signature(self) -> tuple[tuple[int, int], ...]:
        signature = []
        for path in self.paths:
            try:
                stat = os.stat(path)
            except OSError as error:
                raise TlsMaterialError(f"TLS file {path} is unreadable: {error.strerror}") from None
            signature.append((stat.st_mtime_ns, stat.st_size))
        return tuple(signature)

    def context(self) -> ssl.SSLContext:
        now = time.monotonic()
        if self._context is not None and now - self._checked < self.check_every:
            return self._context
        self._checked = now
        signature = self._current_signature()
        if self._context is None or signature != self._signature:
            cert, key, ca = self.paths
            try:
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
                context.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as error:
                if self._context is not None:
                    # Mid-rotation (files written one by one): keep the last good context.
                    logger.warning("TLS files changed but do not load yet (%s); keeping the previous ones", error)
                    return self._context
                raise TlsMaterialError(f"cannot load the push client's TLS files {cert}, {key}, {ca}: {error}") from None
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._context, self._signature = context, signature
            self.version += 1
            logger.info("push client TLS material loaded (version %d)", self.version)
        return self._context
