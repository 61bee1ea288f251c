"""The start-up taint: which nodes have it, and lifting it once the node's proxy holds its first snapshot."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kubernetes_asyncio.client.rest import ApiException

from podiam_operator._engine import ports

logger = logging.getLogger(__name__)


class NodeTaints:
    def __init__(self, remover: ports.TaintRemover, *, key: str, manage: bool) -> None:
        self._remover = remover
        self.key = key
        self.manage = manage  # lift it (else only watched)
        self._tainted: set[str] = set()

    @property
    def tainted(self) -> frozenset[str]:
        return frozenset(self._tainted)

    def load(self, nodes: Iterable[str]) -> None:
        self._tainted = set(nodes)

    def add(self, node: str) -> bool:
        """The node has the taint; True when that is news."""
        if node in self._tainted:
            return False
        self._tainted.add(node)
        return True

    def discard(self, node: str) -> None:
        self._tainted.discard(node)

    async def lift(self, node: str) -> None:
        """The node's proxy is synced: the node may now run pods."""
        if not self.manage or node not in self._tainted:
            return
        try:
            if await self._remover.remove_node_taint(node, self.key):
                logger.info("node %s: proxy synced, start-up taint %s removed", node, self.key)
            self._tainted.discard(node)
        except ApiException as error:
            logger.error("could not remove taint %s from node %s: HTTP %s %s", self.key, node, error.status, error.reason)
