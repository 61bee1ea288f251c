"""List pages decoded keeping only what the operator reads of each object: the rest is skipped unparsed.

A pod is about 3 kB of JSON, most of it managed fields, volumes and
container specs the operator never looks at; ``json.loads`` builds all of
it (50-75 µs a pod on this project's 2-core machine, 20 s of CPU for
150,000 pods and their bindings at a restart). msgspec decodes into
structs that name only the fields the ``_core.facts`` readers use and skips
the others in C; :func:`decode_page` then hands out plain dicts of those
fields, so a listed object and a watched one (``json.loads``, whole) go
through the same readers: the ``_core.facts`` ones at start-up, the
engine's event handlers when a watch lists a kind again after 410 Gone.
``tests/unit/operator/test_shapes.py`` records every field the readers
touch and checks that each survives.

Every leaf is ``Any``: a value of an unexpected type reaches the readers as
it is, as with ``json.loads``, and they judge it.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Shape(msgspec.Struct, omit_defaults=True):
    """Fields left at their default (absent, or null) are absent from the dict, as ``.get`` expects."""


class _Meta(_Shape):
    name: Any = None
    namespace: Any = None
    uid: Any = None
    resourceVersion: Any = None
    generation: Any = None
    labels: Any = None
    annotations: Any = None
    deletionTimestamp: Any = None
    ownerReferences: Any = None


class _Condition(_Shape):
    type: Any = None
    status: Any = None


class _ContainerStatus(_Shape):
    restartCount: Any = None


class _PodSpec(_Shape):
    nodeName: Any = None
    hostNetwork: Any = None
    serviceAccountName: Any = None


class _PodStatus(_Shape):
    phase: Any = None
    podIP: Any = None
    hostIP: Any = None
    conditions: list[_Condition] | None = None  # a proxy's readiness
    containerStatuses: list[_ContainerStatus] | None = None  # a proxy's restarts


class _Pod(_Shape):
    metadata: _Meta | None = None
    spec: _PodSpec | None = None
    status: _PodStatus | None = None


class _NodeSpec(_Shape):
    taints: Any = None


class _Node(_Shape):
    metadata: _Meta | None = None
    spec: _NodeSpec | None = None


class _BindingStatus(_Shape):
    observedGeneration: Any = None  # the rest is the operator's own writing, never read back


class _Binding(_Shape):
    metadata: _Meta | None = None
    spec: Any = None  # small, and read whole
    status: _BindingStatus | None = None


class _MetadataOnly(_Shape):  # namespaces, ServiceAccounts: their annotations say it all
    metadata: _Meta | None = None


class _ListMeta(_Shape):
    resourceVersion: Any = None
    continue_: Any = msgspec.field(default=None, name="continue")


_ITEMS: dict[str, type[_Shape]] = {
    "pods": _Pod, "nodes": _Node, "bindings": _Binding, "namespaces": _MetadataOnly, "serviceaccounts": _MetadataOnly,
}


def _page_type(item: type[_Shape]) -> Any:
    return msgspec.defstruct(f"{item.__name__}List", [("metadata", _ListMeta | None, None), ("items", list[item] | None, None)],  # type: ignore[valid-type]
                             bases=(_Shape,))


_DECODERS = {kind: msgspec.json.Decoder(_page_type(item)) for kind, item in _ITEMS.items()}


def decode_page(kind: str, payload: bytes) -> dict[str, Any]:
    """A list response of ``kind`` (a key of :data:`_ITEMS`) as ``{"metadata": {...}, "items": [...]}`` of plain
    dicts, only the fields the operator reads kept. ValueError if it is not such a list."""
    try:
        page = _DECODERS[kind].decode(payload)
    except msgspec.DecodeError as error:  # ValidationError included
        raise ValueError(f"not a list of {kind}: {error}") from None
    decoded: dict[str, Any] = msgspec.to_builtins(page)
    return decoded
