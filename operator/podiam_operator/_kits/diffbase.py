"""kopf's diff-base, for an operator without change-detecting handlers: nothing built, nothing kept.

kopf builds a diff-base for every event it processes (a deep copy of the
object, stripped) whatever the handlers, but only ``on.create``,
``on.update`` and ``on.resume`` handlers read it; this operator has event
handlers only. While pods started at 100 a second, that copy was a tenth of
the operator's CPU (bench.scale).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


class Unused(kopf.DiffBaseStorage):
    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None
