"""The API calls kopf does not make for us (kubernetes-asyncio): bindings, statuses, Events, taints, peering."""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from podiam_operator._core import facts
from podiam_operator._kits import shapes

logger = logging.getLogger(__name__)
COMPONENT = "podiam-operator"
LIST_PAGE = 500  # objects per list request
WATCH_SECONDS = 300  # the API server ends each watch after about this long; it is resumed from where it got
MERGE_PATCH = "application/merge-patch+json"


class Gone(Exception):
    """A watch cannot resume from its resourceVersion (HTTP 410): list again."""


class Refused(Exception):
    """The API server refused a raw list or watch (kubernetes-asyncio raises only for the responses it reads)."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {message}")
        self.status = status


def _status_message(payload: bytes) -> str:
    """The message of the Status object the API server answered with, else the start of what it sent."""
    try:
        return str(json.loads(payload).get("message", ""))
    except (ValueError, AttributeError):
        return payload[:300].decode(errors="replace")


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A dropped request's own failure, read so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


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

    # --- lists and watches: the operator's own, in raw JSON --------------------------

    def _lister(self, kind: str) -> Any:
        """The list call of ``kind``: "pods", "serviceaccounts", "bindings", "namespaces" or "nodes"."""
        if kind == "pods":
            return self.core.list_pod_for_all_namespaces
        if kind == "serviceaccounts":
            return self.core.list_service_account_for_all_namespaces
        if kind == "namespaces":
            return self.core.list_namespace
        if kind == "nodes":
            return self.core.list_node
        if kind == "bindings":
            return functools.partial(self.custom.list_cluster_custom_object, facts.GROUP, facts.VERSION, facts.PLURAL)
        raise ValueError(f"no such kind: {kind}")

    async def list_all(self, kind: str, versions: dict[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every object of ``kind`` (see :meth:`_lister`) as plain dicts of the fields the operator reads
        (:mod:`shapes`), in pages: no model objects for 150,000 pods. ``versions[kind]``: the list's
        resourceVersion once the last page is read, to watch from.

        The next page is asked for before this one's objects are handed out, so the API server prepares it
        while the caller works."""
        page = await self._page(kind, None)
        while True:
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            following = asyncio.ensure_future(self._page(kind, token)) if token else None
            try:
                for item in page.get("items") or []:
                    yield item
            except BaseException:  # the caller stopped (closed, cancelled): no request left running
                if following is not None:
                    following.cancel()
                    following.add_done_callback(_retrieved)
                raise
            if following is None:
                if versions is not None:
                    versions[kind] = str(meta.get("resourceVersion", ""))
                return
            page = await following

    async def _page(self, kind: str, token: str | None) -> dict[str, Any]:
        extra: dict[str, Any] = {"limit": LIST_PAGE, "_preload_content": False}
        if token:
            extra["_continue"] = token
        response: Any = await self._lister(kind)(**extra)  # the raw aiohttp response
        try:
            payload = await response.read()
        finally:
            response.release()
        if response.status != 200:
            raise Refused(f"listing {kind}", response.status, _status_message(payload))
        return shapes.decode_page(kind, payload)

    async def watch(self, kind: str, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(type, object)`` of each change to ``kind`` after ``resource_version``, BOOKMARKs included
        (their object carries only the resourceVersion reached), until the API server ends the watch
        (after about WATCH_SECONDS). :class:`Gone` when the version is too old to resume from."""
        response: Any = await self._lister(kind)(
            watch=True, resource_version=resource_version, allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
            _preload_content=False, _request_timeout=WATCH_SECONDS + 30)
        try:
            if response.status == 410:
                raise Gone(f"{kind} at resourceVersion {resource_version}")
            if response.status != 200:
                raise Refused(f"watching {kind}", response.status, _status_message(await response.read()))
            rest = b""
            async for chunk in response.content.iter_any():
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    event_type, body = str(event.get("type", "")), event.get("object") or {}
                    if event_type == "ERROR":
                        if body.get("code") == 410:
                            raise Gone(f"{kind} at resourceVersion {resource_version}: {body.get('message', '')}")
                        raise Refused(f"watching {kind}", int(body.get("code") or 0), str(body.get("message", "")))
                    yield event_type, body
        finally:
            response.release()

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
