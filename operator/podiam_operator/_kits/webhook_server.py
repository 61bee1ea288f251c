"""The injection webhook's HTTPS server: kopf's admission machinery, behind a certificate reloaded in place.

kopf 1.45's ``kopf.WebhookServer`` does follow changed certificate files, but
by stopping its listener and starting a new one (a moment in which the API
server's calls are refused, and a pod admitted under ``failurePolicy: Ignore``
misses its variables), and a pair read between the writes of the key and of
the certificate fails ``load_cert_chain`` inside kopf's task, which ends the
operator. So this server (a ``kopf.WebhookServerProtocol``, set as
``settings.admission.server``) listens once, and when the files change it
checks the new pair in a throw-away context first, then loads it into the
live ``SSLContext``: connections made from then on present the new
certificate, open ones keep theirs. A pair that does not load is logged and
left out until the files change again; the old one keeps serving.

It waits for the files before it listens (TLS ``auto`` mode writes them in the
operator's start-up handler, before kopf starts its webhook task; a replica
whose TLS set-up failed retries, and this server starts once they are there).
The requests go to kopf's ``WebhookFn`` as kopf's own server passes them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web
from kopf._core.engines import admission  # kopf exports no name for the errors of a bad admission request

logger = logging.getLogger(__name__)


class CertificateError(Exception):
    """The files do not hold a usable certificate and key."""


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ReloadingCertificate:
    """The server's SSLContext and the files it came from; :meth:`reload` loads a changed pair in place."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = _context()
        self.digest: str | None = None  # of the pair last looked at (loaded or refused)

    def _read(self) -> tuple[bytes, bytes]:
        try:
            return self.cert_file.read_bytes(), self.key_file.read_bytes()
        except OSError as error:
            raise CertificateError(f"cannot read {error.filename}: {error.strerror}") from None

    def present(self) -> bool:
        return self.cert_file.is_file() and self.key_file.is_file()

    def reload(self) -> bool:
        """Load the files when they changed since the last look; True when a new pair now serves."""
        cert, key = self._read()
        digest = hashlib.sha256(cert + b"\0" + key).hexdigest()
        if digest == self.digest:
            return False
        self.digest = digest
        # load_cert_chain wants paths: one private copy of what was read, so that the pair checked is the pair loaded.
        with tempfile.TemporaryDirectory(prefix="podiam-webhook-") as folder:
            cert_copy, key_copy = Path(folder) / "tls.crt", Path(folder) / "tls.key"
            cert_copy.write_bytes(cert)
            key_copy.touch(mode=0o600)
            key_copy.write_bytes(key)
            try:
                # First in a context of its own: a key that does not match would otherwise leave the live one
                # holding the new certificate with the old key.
                _context().load_cert_chain(cert_copy, key_copy)
            except (ssl.SSLError, ValueError) as error:
                raise CertificateError(f"{self.cert_file} and {self.key_file} are not a usable pair: {error}") from None
            self.context.load_cert_chain(cert_copy, key_copy)
        return True


class ReloadingWebhookServer:
    """``settings.admission.server``: listens on ``addr:port`` with :class:`ReloadingCertificate`."""

    def __init__(self, *, addr: str, port: int, cert_file: Path, key_file: Path, check_interval: float = 10.0) -> None:
        self.addr = addr
        self.port = port
        self.certificate = ReloadingCertificate(cert_file, key_file)
        self.check_interval = check_interval
        self.listening = asyncio.Event()

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        await self._first_certificate()
        app = web.Application(client_max_size=4 * 1024 * 1024)  # the API server sends the whole pod (3 MiB etcd limit)

        async def serve(request: web.Request) -> web.Response:
            return await _serve(fn, request)

        app.add_routes([web.post("/{id:.*}", serve)])
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.addr or None, self.port, ssl_context=self.certificate.context, reuse_address=True)
            await site.start()
            host = f"[{self.addr}]" if ":" in self.addr else self.addr
            logger.info("the injection webhook listens on https://%s:%d", host, self.port)
            self.listening.set()
            # Not kopf-managed (the chart registers the configuration): this URL is only kopf's record of it.
            yield kopf.WebhookClientConfig(url=f"https://{host}:{self.port}/")
            while True:
                await asyncio.sleep(self.check_interval)
                self._reload()
        finally:
            self.listening.clear()
            await runner.cleanup()

    async def _first_certificate(self) -> None:
        said = False
        while True:
            if self.certificate.present():
                try:
                    self.certificate.reload()
                    return
                except CertificateError as error:
                    message = str(error)
            else:
                message = f"no certificate at {self.certificate.cert_file} and {self.certificate.key_file} yet"
            if not said:
                logger.warning("the injection webhook waits for its certificate: %s", message)
                said = True
            await asyncio.sleep(1.0)

    def _reload(self) -> None:
        try:
            if self.certificate.reload():
                logger.info("the injection webhook serves its renewed certificate %s", self.certificate.cert_file)
        except CertificateError as error:
            logger.warning("the injection webhook keeps its current certificate: %s", error)


async def _serve(fn: kopf.WebhookFn, request: web.Request) -> web.Response:
    """One AdmissionReview, as kopf's own server hands it over (its errors: the request's, not the pod's)."""
    headers = dict(request.headers)
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    try:
        data = json.loads(await request.text())
        response: Any = await fn(data, webhook=request.match_info.get("id") or None, sslpeer=peer or {}, headers=headers)
    except json.JSONDecodeError as error:
        raise web.HTTPBadRequest(reason=f"not JSON: {error}") from None
    except admission.UnknownResourceError as error:
        raise web.HTTPNotFound(reason=str(error) or None) from None
    except admission.AmbiguousResourceError as error:
        raise web.HTTPConflict(reason=str(error) or None) from None
    except admission.WebhookError as error:
        raise web.HTTPBadRequest(reason=str(error) or None) from None
    return web.json_response(response)


async def _never(fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
    await asyncio.Event().wait()
    yield kopf.WebhookClientConfig()  # never reached


def server(addr: str, port: int, cert_file: Path, key_file: Path) -> kopf.WebhookServerProtocol:
    """The webhook server for ``settings.admission.server``; port 0: one that never listens."""
    if not port:
        return _never
    return ReloadingWebhookServer(addr=addr, port=port, cert_file=cert_file, key_file=key_file)
