"""kopf's per-object bookkeeping, cut to what an operator with event handlers only uses: none.

kopf builds a diff-base for every event (a deep copy of the object, stripped)
whatever the handlers, but only ``on.create``/``on.update``/``on.resume``
handlers read it; and it keeps a memory per object it has seen (a copy of the
memo, throttling, daemon and indexing state: 1.1 KiB measured) until the
object is deleted, for daemons, timers and handler retries: 330 MiB for
150,000 pods and their bindings. This operator has event handlers only.
While pods started at 100 a second the copy was a tenth of the operator's
CPU (bench.scale).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf
from kopf._core.reactor import inventory  # kopf.operator(memories=...) takes one; the class itself is not exported


class Unused(kopf.DiffBaseStorage):
    """No diff-base built or kept."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class Forgetful(inventory.ResourceMemories):
    """A fresh memory for each event, none kept (as kopf does for admission requests)."""

    async def recall(self, raw_body: Any, *, memobase: Any = None, noticed_by_listing: bool = False,
                     ephemeral: bool = False) -> inventory.ResourceMemory:
        return await super().recall(raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True)
