"""Secrets in the operator's namespace, through kubernetes-asyncio.

Writes are race-free across replicas: creation under a fixed name (409
AlreadyExists means another replica won: read its Secret, never overwrite
it), and replacement guarded by resourceVersion (409 Conflict means someone
wrote in between: re-read and decide again).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Awaitable, Mapping
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client import exceptions as kube_exceptions

from podiam_operator.tls import checks

LABELS = {"app.kubernetes.io/part-of": "podiam", "app.kubernetes.io/managed-by": "podiam-operator"}
TLS_TYPE = "kubernetes.io/tls"


@dataclasses.dataclass(frozen=True)
class Stored:
    name: str
    data: dict[str, bytes]
    annotations: dict[str, str]
    labels: dict[str, str]
    type: str
    resource_version: str


def _decode(secret: Any) -> Stored:
    metadata = secret.metadata
    return Stored(
        name=metadata.name,
        data={key: base64.b64decode(value) for key, value in (secret.data or {}).items()},
        annotations=dict(metadata.annotations or {}),
        labels=dict(metadata.labels or {}),
        type=secret.type or "Opaque",
        resource_version=metadata.resource_version,
    )


def _encode(data: Mapping[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in data.items()}


class SecretStore:
    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace

    def _forbidden(self, verb: str, name: str, error: kube_exceptions.ApiException) -> checks.TlsProblem:
        return checks.TlsProblem(
            "TLSForbidden",
            f"the operator may not {verb} Secret {self.namespace}/{name} (HTTP {error.status}); its Role needs "
            "secrets get, create, update and patch in its own namespace (the chart grants them)",
        )

    async def _call(self, verb: str, name: str, call: Awaitable[Any], absent: tuple[int, ...]) -> Stored | None:
        """The Secret the call returns; None for the ``absent`` statuses (what each verb expects to lose)."""
        try:
            return _decode(await call)
        except kube_exceptions.ApiException as error:
            if error.status in absent:
                return None
            if error.status in (401, 403):
                raise self._forbidden(verb, name, error) from None
            raise

    async def read(self, name: str) -> Stored | None:
        return await self._call("get", name, self.core.read_namespaced_secret(name, self.namespace), (404,))

    async def create(self, name: str, data: Mapping[str, bytes], annotations: Mapping[str, str], component: str) -> Stored | None:
        """The new Secret, or None when one of that name exists already (another replica won)."""
        body = client.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels={**LABELS, "app.kubernetes.io/component": component},
                annotations=dict(annotations),
            ),
            type=TLS_TYPE,
            data=_encode(data),
        )
        return await self._call("create", name, self.core.create_namespaced_secret(self.namespace, body), (409,))

    async def replace(self, stored: Stored, data: Mapping[str, bytes], annotations: Mapping[str, str]) -> Stored | None:
        """Replace data and our annotations if nobody wrote since ``stored`` was read; else None."""
        body = client.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=client.V1ObjectMeta(
                name=stored.name,
                namespace=self.namespace,
                resource_version=stored.resource_version,
                # replace keeps only what the body holds: carry the rest over.
                labels=stored.labels,
                annotations={**stored.annotations, **annotations},
            ),
            type=stored.type,
            data=_encode(data),
        )
        call = self.core.replace_namespaced_secret(stored.name, self.namespace, body)
        return await self._call("update", stored.name, call, (404, 409))

    async def annotate(self, name: str, annotations: Mapping[str, str]) -> None:
        """Merge-patch annotations only (bookkeeping that needs no guard)."""
        patch = {"metadata": {"annotations": dict(annotations)}}
        await self._call("patch", name, self.core.patch_namespaced_secret(name, self.namespace, patch), ())
