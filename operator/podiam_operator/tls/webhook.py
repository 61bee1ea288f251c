"""``auto`` mode, the injection webhook: its serving certificate on disk, and the caBundle the API server trusts it by.

The chart registers the MutatingWebhookConfiguration; only the operator
knows the CA (it makes it at run time), so the active replica keeps every
webhook's ``clientConfig.caBundle`` equal to the CA bundle: during a CA
rotation that bundle holds both CAs, so the API server trusts the old and
the new serving certificate alike. Every replica (standbys too: the
Service sends the API server to any of them) writes the certificate for its
own webhook server, which loads a changed pair for new connections
(``podiam_operator._kits.webhook_server``).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from podiam_operator import _settings
from podiam_operator._kits import kube as kubes
from podiam_operator.tls import checks, files, pki

_JSON_PATCH = "application/json-patch+json"


async def publish(kube: kubes.Kube, settings: _settings.OperatorSettings, pair: pki.KeyPair, bundle_pem: bytes,
                  logger: logging.Logger | logging.LoggerAdapter[Any], *, may_write: bool) -> None:
    """The pair to ``--webhook-cert-file`` and ``--webhook-key-file``, then (active replica only) the caBundle;
    raises TlsProblem or the API's errors."""
    cert_file = settings.webhook_cert_file
    if files.write_server_pair(cert_file, settings.webhook_key_file, cert=pair.cert_pem(), key=pair.key_pem()):
        logger.info("TLS: wrote the injection webhook's certificate %s (serial %x) to %s",
                    pki.describe(pair.cert), pair.cert.serial_number, cert_file)
    if may_write and settings.tls_webhook_configuration:
        await _ca_bundle(client.AdmissionregistrationV1Api(kube.api), settings.tls_webhook_configuration, bundle_pem, logger)


async def _ca_bundle(registrations: client.AdmissionregistrationV1Api, name: str, bundle_pem: bytes,
                     logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    wanted = base64.b64encode(bundle_pem).decode()
    try:
        current: Any = await registrations.read_mutating_webhook_configuration(name, _preload_content=False)
        try:
            body = json.loads(await current.read())
        finally:
            current.release()
    except ApiException as error:
        raise checks.TlsProblem(
            "WebhookNotRegistered",
            f"cannot read MutatingWebhookConfiguration {name} (HTTP {error.status} {error.reason}): the chart registers it "
            "and lets the operator get and patch it by name",
        ) from None
    hooks = body.get("webhooks") or []
    # A test of the resourceVersion first: a configuration changed since it was read (a helm upgrade) is read again.
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion", "value": body["metadata"]["resourceVersion"]}]
    ops += [{"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": wanted}
            for index, hook in enumerate(hooks) if (hook.get("clientConfig") or {}).get("caBundle") != wanted]
    if len(ops) == 1:
        return
    await registrations.patch_mutating_webhook_configuration(name, ops, _content_type=_JSON_PATCH)  # type: ignore[call-arg]
    logger.info("TLS: the API server now trusts the injection webhook through the CA bundle (MutatingWebhookConfiguration %s, "
                "%d webhook(s))", name, len(ops) - 1)
