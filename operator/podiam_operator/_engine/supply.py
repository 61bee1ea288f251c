"""Credentials from the cache to the proxies: what each node's pusher reads, fetches and renewals, their failures."""

from __future__ import annotations

import logging

from metadata_proxy import wire
from podiam_operator._core import world
from podiam_operator._core.reasons import Reason
from podiam_operator._engine import ports
from podiam_operator._engine.events import Events, pod_ref
from podiam_operator._engine.statuses import BindingStatuses
from podiam_operator._kits import sts

logger = logging.getLogger(__name__)

MAX_POD_EVENTS_PER_FAILURE = 20


class NodeViews:
    """What a node's pusher reads: the node's desired state, its pods without an IP yet, a key's credentials."""

    def __init__(self, model: world.World, cache: sts.CredentialCache) -> None:
        self._world = model
        self._cache = cache

    def desired(self, node: str) -> world.NodeDesired:
        return self._world.desired_for_node(node)

    def pending(self, node: str) -> dict[str, wire.PendingPod]:
        """The node's pods granted a role and not yet given an IP by the API server, by uid.

        Their proxy may serve one of them by the IP the node's runtime gave it,
        checked against this uid, before the kubelet reports that IP.
        """
        pending = {}
        own = self._world.own_pods.get(node, set())
        for key, grant in self._world.node_pods.get(node, {}).items():
            pod = self._world.pods[key]
            if pod.ip is None and not pod.host_network and key not in own:
                pending[pod.uid] = wire.PendingPod(uid=pod.uid, namespace=pod.namespace, name=pod.name, role_key=grant.key)
        return pending

    def credentials(self, key: str) -> wire.RoleCredentials | None:
        credentials = self._cache.usable(key)
        grant = self._world.grants.get(key)
        if credentials is None or grant is None:
            return None
        return wire.RoleCredentials(
            key=key,
            role_arn=grant.role.arn,
            role_name=grant.role.name,
            access_key_id=credentials.access_key_id,
            secret_access_key=credentials.secret_access_key,
            session_token=credentials.session_token,
            expiration=credentials.expiration,
            last_updated=credentials.issued,
        )


class Supply:
    """Fetches the credentials in use, renews them (the cache's refresher) and says where they went."""

    def __init__(self, model: world.World, cache: sts.CredentialCache, pusher: ports.Pusher, statuses: BindingStatuses,
                 events: Events) -> None:
        self._world = model
        self._cache = cache
        self._pusher = pusher
        self._statuses = statuses
        self._events = events
        self._fetching: set[str] = set()

    async def fetch(self, key: str) -> None:
        grant = self._world.grants.get(key)
        if grant is None or key in self._fetching:
            return
        self._fetching.add(key)
        try:
            await self._cache.get(key, sts.AssumeRequest.for_grant(grant), self._payers(key))
        except sts.StsError as error:
            await self._refreshed(key, None, error)
        else:
            await self._refreshed(key, self._cache.usable(key), None)
        finally:
            self._fetching.discard(key)

    async def refresh_forever(self) -> None:
        await self._cache.run_refresher(self._in_use, self._refreshed, self._payers)

    def _in_use(self, key: str) -> bool:
        return bool(self._world.key_users.get(key))

    def _payers(self, key: str) -> frozenset[str]:
        """The namespaces whose STS budgets the key's calls may spend: those of the pods using it."""
        return frozenset(namespace for namespace, _ in self._world.key_users.get(key, ()))

    async def _refreshed(self, key: str, credentials: sts.Credentials | None, error: sts.StsError | None) -> None:
        """New credentials go to every node that needs them; failures to statuses and Events."""
        if credentials is not None:
            self._pusher.poke(self._world.nodes_using(key))
        # New credentials change only the statuses' expiration (thousands of writes for a busy role): in the
        # background, behind any binding that changed. A failure is news: at once.
        self._statuses.mark(self._world.bindings_using(key), background=credentials is not None)
        if error is not None and self._cache.usable(key) is None:
            grant = self._world.grants.get(key)
            arn = grant.role.arn if grant else "?"
            message = f"AssumeRole {arn} failed: {error.code}: {error.message}; retried later"
            for count, pod_key in enumerate(sorted(self._world.key_users.get(key, ()))):
                if count >= MAX_POD_EVENTS_PER_FAILURE:
                    break
                pod = self._world.pods.get(pod_key)
                if pod is not None:
                    self._events.post(pod_ref(pod), "Warning", Reason.ASSUME_ROLE_FAILED, message)
