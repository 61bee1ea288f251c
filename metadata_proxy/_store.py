"""What the proxy knows: pod IP → pod entry, role key → credentials, pod uid → pending or token-only pod.

Everything here is synchronous and runs on the event loop's thread, so each
push is applied atomically with respect to the metadata handlers: no request
ever sees half a snapshot.

Credentials are rendered to the bytes a pod receives once, when they arrive;
a request does two dict lookups and an expiry comparison.

The container-credentials path finds pods by uid (``by_uid``), in every
kind the operator pushes: pod entries, pending pods and token-only pods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from metadata_proxy import _cni, _http, _sa_tokens, wire

logger = logging.getLogger(__name__)

ClaimsFn = Callable[[str], Awaitable[Sequence[_cni.Claim]]]

@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """One role's credentials as served: pre-rendered bodies, the expiry as epoch seconds."""

    key: str
    role_name: str
    role_arn: str
    expires_at: float
    document: bytes  # .../security-credentials/<role>
    info: bytes  # .../iam/info
    container: bytes  # the container-credentials endpoint's answer
    # The metadata port's answers, ready to write: the document, the listing (the role's name), iam/info.
    response: _http.Response = dataclasses.field(repr=False)
    role_response: _http.Response = dataclasses.field(repr=False)
    info_response: _http.Response = dataclasses.field(repr=False)

    @classmethod
    def render(cls, creds: wire.RoleCredentials) -> Credentials:
        # Laid out as EC2's metadata service lays it out (two-space indent).
        document = json.dumps(
            {
                "Code": "Success",
                "LastUpdated": wire.rfc3339(creds.last_updated),
                "Type": "AWS-HMAC",
                "AccessKeyId": creds.access_key_id,
                "SecretAccessKey": creds.secret_access_key.get_secret_value(),
                "Token": creds.session_token.get_secret_value(),
                "Expiration": wire.rfc3339(creds.expiration),
            },
            indent=2,
        ).encode()
        # EC2 reports the instance profile; a pod has none, so the profile is
        # named after the role (as Kiam does) with a stable id derived from it.
        profile_arn = creds.role_arn.replace(":role/", ":instance-profile/", 1)
        info = json.dumps(
            {
                "Code": "Success",
                "LastUpdated": wire.rfc3339(creds.last_updated),
                "InstanceProfileArn": profile_arn,
                "InstanceProfileId": "AIPA" + hashlib.sha256(profile_arn.encode()).hexdigest()[:17].upper(),
            },
            indent=2,
        ).encode()
        # What EKS Pod Identity's agent answers, which the SDKs' container provider reads.
        container = json.dumps(
            {
                "AccessKeyId": creds.access_key_id,
                "SecretAccessKey": creds.secret_access_key.get_secret_value(),
                "Token": creds.session_token.get_secret_value(),
                "AccountId": creds.role_arn.split(":")[4],
                "Expiration": wire.rfc3339(creds.expiration),
            },
        ).encode()
        return cls(
            key=creds.key,
            role_name=creds.role_name,
            role_arn=creds.role_arn,
            expires_at=creds.expiration.timestamp(),
            document=document,
            info=info,
            container=container,
            response=_http.Response(200, document),
            role_response=_http.Response(200, creds.role_name.encode()),
            info_response=_http.Response(200, info),
        )

    def __repr__(self) -> str:  # never the secrets, wherever this ends up
        return f"Credentials(key={self.key!r}, role_arn={self.role_arn!r}, expires_at={self.expires_at})"


# Whatever the operator pushed naming a pod uid: its entry, its announcement, or its token-only entry.
Holder = wire.PodEntry | wire.PendingPod | wire.TokenOnlyPod


class Store:
    def __init__(self, expiry_margin: float, clock: Callable[[], float] = time.time, key_overlap: float = 300.0) -> None:
        self.expiry_margin = expiry_margin
        self._clock = clock
        self._pods: dict[str, wire.PodEntry] = {}
        self._roles: dict[str, Credentials] = {}
        self._pending: dict[str, wire.PendingPod] = {}  # by uid
        self._token_only: dict[str, wire.TokenOnlyPod] = {}  # by uid
        # The API server's service-account keys, for the container-credentials path.
        self.keys = _sa_tokens.KeySet(key_overlap, clock)
        self.snapshot_generation: int | None = None
        # Resolved (and replaced) on every change: waiters sleep on it, no polling.
        self._changed: asyncio.Future[None] | None = None

    # -- reading -----------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.snapshot_generation is not None

    @property
    def pod_count(self) -> int:
        return len(self._pods)

    @property
    def role_count(self) -> int:
        return len(self._roles)

    @property
    def earliest_expiry(self) -> float:
        """When the first of the role credentials held expires (epoch seconds; infinity when none are held)."""
        return min((creds.expires_at for creds in self._roles.values()), default=math.inf)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def token_only_count(self) -> int:
        return len(self._token_only)

    def pod(self, ip: str) -> wire.PodEntry | None:
        return self._pods.get(ip)

    def pod_ips(self) -> list[str]:
        return list(self._pods)

    def lookup(self, ip: str) -> tuple[wire.PodEntry | None, Credentials | None]:
        """The pod at ``ip`` and its credentials if they can be served now (None otherwise).

        A ``node_identity`` entry has no credentials here: the caller asks the
        node's metadata service for it.
        """
        pod = self._pods.get(ip)
        if pod is None or pod.role_key is None:
            return pod, None
        creds = self._roles.get(pod.role_key)
        if creds is None or creds.expires_at - self.expiry_margin <= self._clock():
            return pod, None
        return pod, creds

    def by_uid(self, uid: str) -> tuple[Holder | None, Credentials | None]:
        """What the operator pushed for the pod ``uid`` and its credentials if they can be served now.

        A pod entry, a pending pod or a token-only pod: the container-credentials
        path knows pods by uid (from their token), not by IP. A node-identity
        entry has no credentials here.
        """
        holder: Holder | None = self._token_only.get(uid) or self._pending.get(uid)
        if holder is None:
            holder = next((entry for entry in self._pods.values() if entry.uid == uid), None)
        if holder is None or holder.role_key is None:
            return holder, None
        creds = self._roles.get(holder.role_key)
        if creds is None or creds.expires_at - self.expiry_margin <= self._clock():
            return holder, None
        return holder, creds

    def by_name(self, namespace: str, name: str) -> Holder | None:
        """Any pod of that name pushed here (for a refusal that can say the uid changed)."""
        held: list[Holder] = [*self._token_only.values(), *self._pending.values(), *self._pods.values()]
        return next((holder for holder in held if (holder.namespace, holder.name) == (namespace, name)), None)

    async def wait_by_uid(self, uid: str, timeout: float) -> tuple[Holder | None, Credentials | None]:
        """``by_uid``, waiting up to ``timeout`` for the pod or its credentials to be pushed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            holder, creds = self.by_uid(uid)
            remaining = deadline - loop.time()
            if creds is not None or (holder is not None and holder.role_key is None) or remaining <= 0:
                return holder, creds
            if self._changed is None or self._changed.done():
                self._changed = loop.create_future()
            await asyncio.wait((self._changed,), timeout=remaining)

    def learn(self, ip: str, claims: Sequence[_cni.Claim]) -> tuple[wire.PodEntry | None, Credentials | None]:
        """A pending pod recognised by the IP the node gave it, and its credentials (None, None: no such pod).

        Only for an IP no entry names, and only when the newest of the node's
        records naming the IP (``claims``: a later set-up that reuses an IP
        writes a newer one) is a pod the operator announced as starting here:
        same uid, namespace and name. Nothing is kept: every request checks
        again, so the pod loses this the moment the operator stops announcing
        it (its entry arrived, its role was revoked, it was deleted).
        """
        if ip in self._pods or not claims:
            return None, None
        newest = max(claim.written for claim in claims)
        owners = {(c.uid, c.namespace, c.name) for c in claims if c.written == newest}
        if len(owners) != 1:
            return None, None  # two set-ups at the same instant: which one holds the IP cannot be told
        ((uid, namespace, name),) = owners
        pending = self._pending.get(uid)
        if pending is None or (pending.namespace, pending.name) != (namespace, name):
            return None, None
        creds = self._roles.get(pending.role_key)
        if creds is None or creds.expires_at - self.expiry_margin <= self._clock():
            return None, None
        entry = wire.PodEntry(ip=ip, uid=uid, namespace=namespace, name=name, role_key=pending.role_key)
        return entry, creds

    async def wait_lookup(self, ip: str, timeout: float, claims: ClaimsFn | None = None) -> tuple[wire.PodEntry | None, Credentials | None]:
        """``lookup``, waiting up to ``timeout`` for the pod or its credentials to be pushed.

        With ``claims`` (the node's records naming an IP), an IP no entry names
        is also tried with ``learn`` while pods are pending here: at once and
        after every push, the records fetched once (they are written before the
        pod's containers start).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        found: Sequence[_cni.Claim] | None = None
        while True:
            pod, creds = self.lookup(ip)
            if creds is not None or (pod is not None and pod.node_identity):
                return pod, creds
            if pod is None and claims is not None and self._pending:
                if found is None:
                    found = await claims(ip)
                    continue  # pushes may have arrived meanwhile
                learned = self.learn(ip, found)
                if learned[1] is not None:
                    return learned
            remaining = deadline - loop.time()
            if remaining <= 0:
                return pod, creds
            if self._changed is None or self._changed.done():
                self._changed = loop.create_future()
            # asyncio.wait neither cancels the shared future on timeout nor
            # raises: every waiter wakes on the next change and re-checks.
            await asyncio.wait((self._changed,), timeout=remaining)

    def status(self, node_name: str) -> wire.ProxyStatus:
        return wire.ProxyStatus(
            node_name=node_name, ready=self.ready, snapshot_generation=self.snapshot_generation,
            roles=len(self._roles), pods=len(self._pods), pending=len(self._pending),
            token_only=len(self._token_only), service_account_keys=self.keys.fingerprint,
        )

    # -- writing -----------------------------------------------------------
    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def _servable(self, creds: wire.RoleCredentials) -> str | None:
        left = creds.expiration.timestamp() - self._clock()
        if left <= self.expiry_margin:
            return (
                f"credentials expire at {wire.rfc3339(creds.expiration)}, within the proxy's expiry margin "
                f"({self.expiry_margin:g}s): refused, never served"
            )
        return None

    def _take_keys(self, keys: wire.ServiceAccountKeys | None) -> None:
        if keys is None:
            return  # no news: the keys held stay
        for problem in self.keys.replace(keys):
            # Not a rejection: the push is right to carry the API server's whole JWKS, of which these keys are unusable here.
            logger.warning("service-account key not used", extra={"problem": problem})

    def apply_changes(self, changes: wire.Changes) -> wire.Ack:
        """Keys, role upserts, pod removals, pod upserts, pending removals, pending upserts, token-only removals,
        token-only upserts, role removals — in that order (see ``wire``)."""
        applied = 0
        rejected: list[wire.Rejection] = []
        self._take_keys(changes.service_account_keys)
        for role in changes.upsert_roles:
            reason = self._servable(role)
            if reason:
                rejected.append(wire.Rejection(ip="", uid="", role_key=role.key, reason=reason))
            else:
                self._roles[role.key] = Credentials.render(role)
                applied += 1
        for removal in changes.remove_pods:
            held = self._pods.get(removal.ip)
            if held is not None and held.uid != removal.uid:
                rejected.append(wire.Rejection(
                    ip=removal.ip, uid=removal.uid, reason=f"{removal.ip} is held by another pod (uid {held.uid})",
                ))
                continue
            self._pods.pop(removal.ip, None)  # removing what is not there is done already
            applied += 1
        for entry in changes.upsert_pods:
            held = self._pods.get(entry.ip)
            if held is not None and held.uid != entry.uid:
                rejected.append(wire.Rejection(
                    ip=entry.ip, uid=entry.uid,
                    reason=f"{entry.ip} is held by another pod (uid {held.uid}); remove it first or send a snapshot",
                ))
            elif entry.role_key is not None and entry.role_key not in self._roles:
                rejected.append(wire.Rejection(
                    ip=entry.ip, uid=entry.uid, reason=f"unknown role key {entry.role_key!r}: push its credentials first",
                ))
            else:
                self._pods[entry.ip] = entry
                self._pending.pop(entry.uid, None)  # its IP is known now
                applied += 1
        for uid in changes.remove_pending:
            self._pending.pop(uid, None)
            applied += 1
        entry_uids = {entry.uid for entry in self._pods.values()} if changes.upsert_pending else set()
        for pending in changes.upsert_pending:
            reason = self._pending_refused(pending, self._roles, entry_uids)
            if reason:
                rejected.append(wire.Rejection(ip="", uid=pending.uid, role_key=pending.role_key, reason=reason))
            else:
                self._pending[pending.uid] = pending
                applied += 1
        for uid in changes.remove_token_only:
            self._token_only.pop(uid, None)
            applied += 1
        for token_only in changes.upsert_token_only:
            if token_only.role_key not in self._roles:
                rejected.append(wire.Rejection(ip="", uid=token_only.uid, role_key=token_only.role_key,
                                               reason=f"unknown role key {token_only.role_key!r}: push its credentials first"))
            else:
                self._token_only[token_only.uid] = token_only
                applied += 1
        for key in changes.remove_roles:
            self._roles.pop(key, None)
            applied += 1
        self._notify()
        return wire.Ack(applied=applied, rejected=rejected)

    def apply_snapshot(self, snapshot: wire.Snapshot) -> wire.Ack:
        """Replace everything at once; the same rules as changes apply within the snapshot."""
        roles: dict[str, Credentials] = {}
        pods: dict[str, wire.PodEntry] = {}
        rejected: list[wire.Rejection] = []
        for role in snapshot.roles:
            reason = self._servable(role)
            if reason:
                rejected.append(wire.Rejection(ip="", uid="", role_key=role.key, reason=reason))
            else:
                roles[role.key] = Credentials.render(role)
        claims: dict[str, int] = {}
        for entry in snapshot.pods:
            claims[entry.ip] = claims.get(entry.ip, 0) + 1
        for entry in snapshot.pods:
            if claims[entry.ip] > 1:
                # Which claim is right cannot be told: the IP serves nobody.
                rejected.append(wire.Rejection(
                    ip=entry.ip, uid=entry.uid, reason=f"{entry.ip} is claimed by {claims[entry.ip]} pods in the snapshot",
                ))
            elif entry.role_key is not None and entry.role_key not in roles:
                rejected.append(wire.Rejection(
                    ip=entry.ip, uid=entry.uid, reason=f"unknown role key {entry.role_key!r}: not in the snapshot's roles",
                ))
            else:
                pods[entry.ip] = entry
        token_only: dict[str, wire.TokenOnlyPod] = {}
        for held in snapshot.token_only:
            if held.role_key not in roles:
                rejected.append(wire.Rejection(ip="", uid=held.uid, role_key=held.role_key,
                                               reason=f"unknown role key {held.role_key!r}: not in the snapshot's roles"))
            else:
                token_only[held.uid] = held
        pending: dict[str, wire.PendingPod] = {}
        entry_uids = {entry.uid for entry in pods.values()}
        for announced in snapshot.pending:
            reason = self._pending_refused(announced, roles, entry_uids)
            if reason:
                rejected.append(wire.Rejection(ip="", uid=announced.uid, role_key=announced.role_key, reason=reason))
            else:
                pending[announced.uid] = announced
        self._take_keys(snapshot.service_account_keys)
        self._roles, self._pods, self._pending, self._token_only = roles, pods, pending, token_only
        self.snapshot_generation = snapshot.generation
        self._notify()
        return wire.Ack(applied=len(roles) + len(pods) + len(pending) + len(token_only), rejected=rejected)

    @staticmethod
    def _pending_refused(pending: wire.PendingPod, roles: dict[str, Credentials], entry_uids: set[str]) -> str | None:
        if pending.role_key not in roles:
            return f"unknown role key {pending.role_key!r}: push its credentials first"
        if pending.uid in entry_uids:
            return f"pod {pending.uid} has an entry already: it is not pending"
        return None
