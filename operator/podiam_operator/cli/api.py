"""What ``kubectl podiam`` reads, and only that: GET and LIST through the user's kubeconfig and RBAC.

Every read returns the object's JSON as the API server sent it, or a
:class:`Hidden` saying why it is not there (not found, forbidden...), so the
report can say what it could not see instead of guessing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from podiam_operator._core import facts


@dataclasses.dataclass(frozen=True)
class Hidden:
    """An object the plugin could not read: ``status`` 404 (none), 403 (RBAC), 0 (no connection)."""

    what: str
    status: int
    reason: str

    @property
    def text(self) -> str:
        if self.status == 404:
            return f"{self.what}: not found"
        if self.status == 403:
            return f"{self.what}: forbidden to you (RBAC)"
        return f"{self.what}: {self.reason}"


Body = dict[str, Any]


class Api:
    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.api: client.ApiClient | None = None
        self.default_namespace = "default"  # the context's namespace, as kubectl uses it

    async def __aenter__(self) -> Api:
        configuration = client.Configuration()
        if self.kubeconfig is None and self.context is None and not os.environ.get("KUBECONFIG") \
                and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.path.exists(os.path.expanduser("~/.kube/config")):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            # persist_config=False: a token refresh never writes to the user's kubeconfig.
            loader = await config.load_kube_config(config_file=self.kubeconfig, context=self.context,
                                                   client_configuration=configuration, persist_config=False)
            current: Any = loader.current_context
            try:
                self.default_namespace = str(current["context"].safe_get("namespace") or "default")
            except (KeyError, TypeError, AttributeError):
                pass
        self.api = client.ApiClient(configuration)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.api is not None:
            await self.api.close()

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    async def _read(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Body | Hidden:
        try:
            response = await call(*args, _preload_content=False, **kwargs)
        except ApiException as error:
            return Hidden(what, int(error.status or 0), str(error.reason))
        except OSError as error:
            return Hidden(what, 0, f"cannot reach the API server ({error})")
        try:
            raw = await response.read()
            status = int(getattr(response, "status", 200))
        finally:
            response.release()
        if status >= 400:  # unparsed responses are not raised for: the Status object says why
            try:
                reason = str(json.loads(raw).get("reason") or status)
            except (ValueError, AttributeError):
                reason = str(status)
            return Hidden(what, status, reason)
        body: Body = json.loads(raw)
        return body

    async def _list(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> list[Body] | Hidden:
        items: list[Body] = []
        token: str | None = None
        while True:
            extra = dict(kwargs, limit=500)
            if token:
                extra["_continue"] = token
            page = await self._read(what, call, *args, **extra)
            if isinstance(page, Hidden):
                return page
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    # --- the objects ------------------------------------------------------------------

    async def pod(self, namespace: str, name: str) -> Body | Hidden:
        return await self._read(f"pod {namespace}/{name}", self.core.read_namespaced_pod, name, namespace)

    async def pods(self, namespace: str | None = None, *, field_selector: str | None = None,
                   label_selector: str | None = None) -> list[Body] | Hidden:
        extra = {k: v for k, v in (("field_selector", field_selector), ("label_selector", label_selector)) if v}
        if namespace is None:
            return await self._list("pods (all namespaces)", self.core.list_pod_for_all_namespaces, **extra)
        return await self._list(f"pods in {namespace}", self.core.list_namespaced_pod, namespace, **extra)

    async def namespace(self, name: str) -> Body | Hidden:
        return await self._read(f"namespace {name}", self.core.read_namespace, name)

    async def namespaces(self) -> list[Body] | Hidden:
        return await self._list("namespaces", self.core.list_namespace)

    async def service_account(self, namespace: str, name: str) -> Body | Hidden:
        return await self._read(f"serviceaccount {namespace}/{name}", self.core.read_namespaced_service_account, name, namespace)

    async def service_accounts(self) -> list[Body] | Hidden:
        return await self._list("serviceaccounts (all namespaces)", self.core.list_service_account_for_all_namespaces)

    async def bindings(self, namespace: str | None = None) -> list[Body] | Hidden:
        if namespace is None:
            return await self._list("podrolebindings (all namespaces)", self.custom.list_cluster_custom_object,
                                    facts.GROUP, facts.VERSION, facts.PLURAL)
        return await self._list(f"podrolebindings in {namespace}", self.custom.list_namespaced_custom_object,
                                facts.GROUP, facts.VERSION, namespace, facts.PLURAL)

    async def node(self, name: str) -> Body | Hidden:
        return await self._read(f"node {name}", self.core.read_node, name)

    async def nodes(self) -> list[Body] | Hidden:
        return await self._list("nodes", self.core.list_node)

    async def events(self, namespace: str, *, uid: str | None = None) -> list[Body] | Hidden:
        extra = {"field_selector": f"involvedObject.uid={uid}"} if uid else {}
        return await self._list(f"events in {namespace}", self.core.list_namespaced_event, namespace, **extra)

    async def config_map(self, namespace: str, name: str) -> Body | Hidden:
        return await self._read(f"configmap {namespace}/{name}", self.core.read_namespaced_config_map, name, namespace)

    async def config_maps(self, field_selector: str) -> list[Body] | Hidden:
        return await self._list("configmaps (all namespaces)", self.core.list_config_map_for_all_namespaces,
                                field_selector=field_selector)

    async def peering(self, name: str) -> Body | Hidden:
        return await self._read(f"clusterkopfpeering {name}", self.custom.get_cluster_custom_object,
                                "kopf.dev", "v1", "clusterkopfpeerings", name)
