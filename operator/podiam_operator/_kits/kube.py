"""The API calls kopf does not make for us (kubernetes-asyncio): bindings, statuses, Events, taints, peering."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from podiam_operator._core import facts

logger = logging.getLogger(__name__)
COMPONENT = "podiam-operator"
MERGE_PATCH = "application/merge-patch+json"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _proxy_or_netrc() -> bool:
    names = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "netrc"}
    if any(key.lower() in names for key in os.environ):
        return True
    return (Path.home() / ".netrc").exists() or (Path.home() / "_netrc").exists()


class Kube:
    """The operator's one API client (its TLS too); ``api``: one made already (tests), else the context makes it."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api

    async def __aenter__(self) -> Kube:
        if self.api is not None:
            return self
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            configuration = client.Configuration.get_default_copy()
        else:
            configuration = client.Configuration()
            await config.load_kube_config(client_configuration=configuration)
        self.api = client.ApiClient(configuration)
        if not _proxy_or_netrc():
            # kubernetes_asyncio's session trusts the environment: for every request aiohttp then looks
            # for proxy variables and reads ~/.netrc, in a thread. With neither there, that is all cost.
            self.api.rest_client.pool_manager._trust_env = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.api is not None:
            await self.api.close()

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    # --- PodRoleBindings -------------------------------------------------------

    async def create_owned_binding(self, pod: facts.PodFacts) -> None:
        spec: dict[str, Any] = {"role": pod.role}
        if pod.external_id:
            spec["externalId"] = pod.external_id
        body = {
            "apiVersion": facts.API_VERSION,
            "kind": facts.KIND,
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": {facts.POD_LABEL: pod.name[:63], "app.kubernetes.io/managed-by": COMPONENT},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid, "controller": True, "blockOwnerDeletion": False}
                ],
            },
            "spec": spec,
        }
        await self.custom.create_namespaced_custom_object(facts.GROUP, facts.VERSION, pod.namespace, facts.PLURAL, body)

    async def patch_binding_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        await self.custom.patch_namespaced_custom_object(
            facts.GROUP, facts.VERSION, namespace, facts.PLURAL, name, {"spec": spec}, _content_type=MERGE_PATCH  # type: ignore[call-arg]
        )

    async def delete_binding(self, namespace: str, name: str, uid: str) -> None:
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        try:
            await self.custom.delete_namespaced_custom_object(facts.GROUP, facts.VERSION, namespace, facts.PLURAL, name, body=body)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    async def patch_binding_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self.custom.patch_namespaced_custom_object_status(
            facts.GROUP, facts.VERSION, namespace, facts.PLURAL, name, {"status": status}, _content_type=MERGE_PATCH  # type: ignore[call-arg]
        )

    # --- what exists (after a relist) ----------------------------------------------

    async def list_all(self, kind: str) -> AsyncIterator[dict[str, Any]]:
        """Every pod, ServiceAccount, PodRoleBinding, namespace or node (``kind``: "pods", "serviceaccounts",
        "bindings", "namespaces", "nodes") as raw JSON, in pages: no model objects for 150,000 pods."""
        token: str | None = None
        while True:
            extra: dict[str, Any] = {"limit": 500, "_preload_content": False}
            response: Any  # the raw aiohttp response (_preload_content=False)
            if token:
                extra["_continue"] = token
            if kind == "pods":
                response = await self.core.list_pod_for_all_namespaces(**extra)
            elif kind == "serviceaccounts":
                response = await self.core.list_service_account_for_all_namespaces(**extra)
            elif kind == "namespaces":
                response = await self.core.list_namespace(**extra)
            elif kind == "nodes":
                response = await self.core.list_node(**extra)
            else:
                response = await self.custom.list_cluster_custom_object(facts.GROUP, facts.VERSION, facts.PLURAL, **extra)
            try:
                page = json.loads(await response.read())
            finally:
                response.release()
            for item in page.get("items") or []:
                yield item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    async def list_uids(self, kind: str) -> dict[tuple[str, str], str]:
        """``(namespace, name) -> uid`` of every pod, ServiceAccount or PodRoleBinding (``kind`` as in :meth:`list_all`)."""
        found: dict[tuple[str, str], str] = {}
        async for item in self.list_all(kind):
            meta = item.get("metadata") or {}
            found[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = str(meta.get("uid", ""))
        return found

    async def current_uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The uid of the pod, ServiceAccount or PodRoleBinding of that name now (a quorum read), None if there is none.

        A list with a field selector, not a get: the operator's RBAC grants list and watch only.
        """
        selector = f"metadata.name={name}"
        response: Any
        if kind == "pods":
            response = await self.core.list_namespaced_pod(namespace, field_selector=selector, _preload_content=False)
        elif kind == "serviceaccounts":
            response = await self.core.list_namespaced_service_account(namespace, field_selector=selector, _preload_content=False)
        else:
            response = await self.custom.list_namespaced_custom_object(
                facts.GROUP, facts.VERSION, namespace, facts.PLURAL, field_selector=selector, _preload_content=False)
        try:
            page = json.loads(await response.read())
        finally:
            response.release()
        for item in page.get("items") or []:
            meta = item.get("metadata") or {}
            if meta.get("name") == name:
                return str(meta.get("uid", "")) or None
        return None

    # --- Events ------------------------------------------------------------------

    async def event(self, ref: dict[str, str], kind: str, reason: str, message: str) -> bool:
        """A core/v1 Event on ``ref`` (apiVersion, kind, name, namespace, uid: "" when unknown); False when not posted."""
        now = _now()
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{ref['name'][:200]}.", namespace=ref["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=ref["apiVersion"], kind=ref["kind"], name=ref["name"], namespace=ref["namespace"], uid=ref["uid"] or None
            ),
            reason=reason,
            message=message[:1024],
            type=kind,
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=os.environ.get("POD_NAME", COMPONENT),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self.core.create_namespaced_event(ref["namespace"], body)
        except ApiException as error:
            logger.warning("could not post Event %s on %s %s/%s: HTTP %s", reason, ref["kind"], ref["namespace"], ref["name"], error.status)
            return False
        return True

    # --- nodes ---------------------------------------------------------------------

    async def remove_node_taint(self, node: str, key: str) -> bool:
        """Remove taint ``key`` from ``node``; True if it was there. Optimistic concurrency, retried on conflicts."""
        for _ in range(5):
            try:
                body = await self.core.read_node(node)
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
            taints = body.spec.taints or []
            kept = [t for t in taints if t.key != key]
            if len(kept) == len(taints):
                return False
            patch = {
                "metadata": {"resourceVersion": body.metadata.resource_version},
                "spec": {"taints": [self.api.sanitize_for_serialization(t) for t in kept] or None},  # type: ignore[union-attr]
            }
            try:
                await self.core.patch_node(node, patch, _content_type=MERGE_PATCH)  # type: ignore[call-arg]
                return True
            except ApiException as error:
                if error.status != 409:
                    raise
            await asyncio.sleep(0.1)
        return False

    # --- peering ---------------------------------------------------------------------

    async def ensure_peering(self, name: str) -> None:
        """kopf's peering needs its ClusterKopfPeering object; create it if missing."""
        try:
            await self.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
        except ApiException as error:
            if error.status != 404:
                raise
            try:
                await self.custom.create_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
                )
            except ApiException as create_error:
                if create_error.status != 409:
                    raise

    async def peers(self, name: str) -> dict[str, Any]:
        body = await self.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
        status = body.get("status") if isinstance(body, dict) else None
        return status if isinstance(status, dict) else {}
