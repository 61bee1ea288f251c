"""The API server's service-account token issuer and signing keys, for the proxies' container-credentials path.

The proxies check pods' projected ServiceAccount tokens offline (they have no
API access), so the operator reads what any OIDC relying party reads: the
issuer from ``/.well-known/openid-configuration`` and the public keys from
``/openid/v1/jwks`` (the API server's own paths, whatever ``jwks_uri`` says:
it may name an address the operator cannot reach). The default
``system:service-account-issuer-discovery`` binding lets every
ServiceAccount read both; the chart grants it explicitly too.

Read again every ``interval``: a key rotation on the API server reaches the
proxies within that (and the proxies keep a key the operator stops pushing
for an overlap of their own). Nothing secret: public keys only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pydantic
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from metadata_proxy import wire
from podiam_operator._kits import kube as kubes
from podiam_operator._kits import retries

logger = logging.getLogger(__name__)


class KeysError(Exception):
    pass


async def _read(response: Any) -> Any:
    try:
        return json.loads(await response.read())
    finally:
        response.release()


async def fetch(kube: kubes.Kube) -> wire.ServiceAccountKeys:
    """One read of the issuer and the JWKS; :class:`KeysError` saying what failed."""
    try:
        configuration = await _read(await client.WellKnownApi(kube.api).get_service_account_issuer_open_id_configuration(
            _preload_content=False))
        jwks = await _read(await client.OpenidApi(kube.api).get_service_account_issuer_open_id_keyset(_preload_content=False))
    except ApiException as error:
        hint = " (the operator's ServiceAccount needs the system:service-account-issuer-discovery ClusterRole)" \
            if error.status in (401, 403) else ""
        raise KeysError(f"HTTP {error.status} {error.reason}{hint}") from None
    except (OSError, asyncio.TimeoutError, ValueError) as error:
        raise KeysError(f"{type(error).__name__}: {error}") from None
    try:
        return wire.ServiceAccountKeys(issuer=configuration["issuer"], keys=jwks["keys"])
    except (KeyError, TypeError, pydantic.ValidationError) as error:
        raise KeysError(f"the API server's discovery documents are not what OIDC says: {error}") from None


class Source:
    """The keys last read (``source()``), kept up to date by :meth:`run`."""

    def __init__(self, kube: kubes.Kube, interval: float) -> None:
        self.kube = kube
        self.interval = interval
        self.current: wire.ServiceAccountKeys | None = None

    def __call__(self) -> wire.ServiceAccountKeys | None:
        return self.current

    async def refresh(self) -> bool:
        """Read once; True when the keys changed."""
        keys = await fetch(self.kube)
        if self.current is not None and keys.fingerprint() == self.current.fingerprint():
            return False
        kids = sorted(str(key.get("kid")) for key in keys.keys)
        logger.info("service-account keys of issuer %s: %s (pushed to every proxy for the container-credentials path)",
                    keys.issuer, ", ".join(kids) or "none")
        self.current = keys
        return True

    async def run(self, on_change: Callable[[], None]) -> None:
        """Until cancelled: read every ``interval``; failures are logged once each and retried sooner."""
        retry = retries.Retry(retries.API_LOW, self.interval)
        while True:
            try:
                if await self.refresh():
                    on_change()
                if retry.succeeded():
                    logger.info("service-account keys readable again")
                await asyncio.sleep(self.interval)
            except KeysError as error:
                if retry.failed(str(error)):
                    logger.error("cannot read the API server's service-account keys: %s; the proxies keep the keys they "
                                 "hold (none: the container-credentials path answers 503); retrying", error)
                await retry.pause()
