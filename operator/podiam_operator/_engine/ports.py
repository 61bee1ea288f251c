"""What the engine needs of its collaborators: the real ones are in ``_kits``, unit tests give stand-ins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from podiam_operator._core import facts
from podiam_operator._kits import push


class StatusWriter(Protocol):
    async def patch_binding_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...


class OwnedBindingWriter(Protocol):
    async def create_owned_binding(self, pod: facts.PodFacts) -> None: ...

    async def patch_binding_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None: ...

    async def delete_binding(self, namespace: str, name: str, uid: str) -> None: ...


class EventPoster(Protocol):
    async def event(self, ref: dict[str, str], kind: str, reason: str, message: str) -> bool: ...


class TaintRemover(Protocol):
    async def remove_node_taint(self, node: str, key: str) -> bool: ...


class Kube(StatusWriter, OwnedBindingWriter, EventPoster, TaintRemover, Protocol):
    """Every API call the engine makes (``_kits.kube.Kube``)."""


class Pusher(Protocol):
    """The pushes to the proxies (``_kits.push.Pusher``)."""

    def set_proxy(self, node: str, proxy: facts.ProxyFacts | None) -> None: ...

    def announce(self) -> None: ...

    def start(self) -> None: ...

    def poke(self, nodes: set[str]) -> None: ...

    def poke_all(self) -> None: ...

    def synced_once(self, node: str) -> bool: ...

    def states(self) -> dict[str, push.ProxyState]: ...

    async def close(self) -> None: ...


# Made by the engine's caller, with the engine's views of what each node should hold.
PusherFactory = Callable[[push.DesiredFn, push.CredentialsFn, push.SyncedFn, push.PendingFn], Pusher]


class Leadership(Protocol):
    """Which replica is active (``_kits.leadership.Leadership``)."""

    async def observe(self) -> None: ...

    async def wait_until_leader(self) -> None: ...

    async def watch(self) -> None: ...

    async def higher_peers(self) -> list[str]: ...


# The operator's own AWS identity, ``(arn, account)`` (GetCallerIdentity).
Identity = Callable[[], Awaitable[tuple[str, str]]]
