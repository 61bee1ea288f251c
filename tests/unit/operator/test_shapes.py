"""shapes.decode_page keeps every field a listing's readers touch (the starting picture's, a relist's): each reader
runs on a whole object that records what it reads, and each of those fields must come out of the lean decoding
unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from podiam_operator import _assembly, _settings
from podiam_operator._core import facts
from podiam_operator._kits import shapes

pytestmark = pytest.mark.unit

WHOLE, EACH = "<whole>", "<each>"  # a mapping read whole (iterated), every element of a list

META = {
    "name": "web-1", "namespace": "apps", "uid": "u-1", "resourceVersion": "7", "generation": 3,
    "creationTimestamp": "2026-11-30T10:00:00Z",
    "labels": {"app": "web", "app.kubernetes.io/name": "podiam-proxy"},
    "annotations": {
        facts.ROLE_ANNOTATION: " reader ", facts.EXTERNAL_ID_ANNOTATION: "x-1", facts.SESSION_NAME_ANNOTATION: "s",
        facts.MIRROR_ANNOTATION: "m", facts.IRSA_ANNOTATION: "arn:aws:iam::1:role/r", facts.DEFAULT_ROLE_ANNOTATION: "d",
        "iam.amazonaws.com/permitted": ".*", "podiam.io/allowed-roles": "a,b", "other": "kept",
    },
    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web-1", "uid": "p-1", "controller": True}],
    "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:metadata": {}}}],
}
POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": META,
    "spec": {
        "nodeName": "node-1", "hostNetwork": True, "serviceAccountName": "web", "serviceAccount": "web",
        "containers": [{"name": "app", "image": "app", "env": [{"name": "A", "value": "1"}]}],
        "volumes": [{"name": "token", "projected": {"sources": []}}], "tolerations": [],
    },
    "status": {
        "phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}], "hostIP": "192.0.2.1",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": None}, {"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": "app", "restartCount": 2, "image": "app", "state": {"running": {}}},
                              {"name": "side", "restartCount": 1}],
    },
}
BINDING = {
    "apiVersion": facts.API_VERSION, "kind": facts.KIND, "metadata": META,
    "spec": {
        "role": "reader", "podSelector": {"matchLabels": {"app": "web"}}, "serviceAccountName": "web", "externalId": "x",
        "sessionDuration": 3600, "intermediateRole": "hop", "sessionTags": {"team": "a"}, "disableSessionTags": True,
    },
    "status": {"phase": "Bound", "pods": ["web-1"], "observedGeneration": 3},
}
NODE = {"metadata": META, "spec": {"taints": [{"key": "podiam.io/agent-not-ready", "effect": "NoSchedule"}],
                                   "podCIDR": "10.0.0.0/24"}, "status": {"images": [{"names": ["a"]}]}}
NAMESPACE = {"metadata": META, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
SERVICE_ACCOUNT = {"metadata": META, "secrets": [{"name": "t"}]}

SETTINGS = _settings.OperatorSettings(proxy_namespace="apps")
READER = facts.Reader(role_key=facts.ROLE_ANNOTATION, external_id_key=facts.EXTERNAL_ID_ANNOTATION)

# What the starting listing (_assembly.picture) reads of each kind.
READERS: dict[str, list[Callable[[Any], object]]] = {
    "pods": [lambda body: facts.pod_facts(body, READER), lambda body: _assembly.is_proxy(body, SETTINGS), facts.proxy_facts],
    # Engine.binding_event also reads the observed generation, when a watch lists bindings again.
    "bindings": [facts.binding_facts, lambda body: (body.get("status") or {}).get("observedGeneration")],
    "nodes": [lambda body: facts.node_has_taint(body, "podiam.io/agent-not-ready"),
              lambda body: body.get("metadata", {}).get("name")],
    "namespaces": [lambda body: facts.namespace_policy(body, READER)],
    "serviceaccounts": [facts.service_account_facts],
}

def _deleting(body: dict[str, Any]) -> dict[str, Any]:
    return body | {"metadata": body["metadata"] | {"deletionTimestamp": "2026-11-30T11:00:00Z"}}


# Each kind live and being deleted: a reader may stop early on either (proxy_facts does on a deleted pod).
OBJECTS = [(kind, made(body)) for kind, body in (("pods", POD), ("bindings", BINDING), ("nodes", NODE), ("namespaces", NAMESPACE),
                                                  ("serviceaccounts", SERVICE_ACCOUNT)) for made in (dict, _deleting)]


class Recorded(Mapping[str, Any]):
    """A mapping that notes each path read from it (``reads``); lists and mappings under it do too."""

    def __init__(self, data: Mapping[str, Any], path: tuple[str, ...], reads: set[tuple[str, ...]]) -> None:
        self._data, self._path, self._reads = data, path, reads

    def __getitem__(self, key: str) -> Any:
        path = self._path + (key,)
        self._reads.add(path)
        return _recorded(self._data[key], path, self._reads)

    def __contains__(self, key: object) -> bool:
        self._reads.add(self._path + (str(key),))
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        self._reads.add(self._path + (WHOLE,))
        return iter(self._data)

    def __len__(self) -> int:
        self._reads.add(self._path + (WHOLE,))
        return len(self._data)

    def __bool__(self) -> bool:  # `status or {}` asks only whether it is empty: what is read of it is noted apart
        return bool(self._data)


def _recorded(value: Any, path: tuple[str, ...], reads: set[tuple[str, ...]]) -> Any:
    if isinstance(value, Mapping):
        return Recorded(value, path, reads)
    if isinstance(value, list):
        return [_recorded(each, path + (EACH,), reads) for each in value]
    return value


MISSING = object()


def _at(value: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` (a list of them under EACH), MISSING where absent or null (alike to ``.get``)."""
    for number, step in enumerate(path):
        if step == WHOLE:
            return value
        if step == EACH:
            return [_at(each, path[number + 1:]) for each in value] if isinstance(value, list) else MISSING
        if not isinstance(value, Mapping) or value.get(step) is None:
            return MISSING
        value = value[step]
    return value


def _lean(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    page = shapes.decode_page(kind, json.dumps({"metadata": {"resourceVersion": "9", "continue": "t"}, "items": [body]}).encode())
    assert page["metadata"] == {"resourceVersion": "9", "continue": "t"}
    [item] = page["items"]
    return item


@pytest.mark.parametrize(("kind", "whole"), OBJECTS)
def test_every_field_the_readers_touch_survives(kind: str, whole: dict[str, Any]) -> None:
    reads: set[tuple[str, ...]] = set()
    for read in READERS[kind]:
        read(Recorded(whole, (), reads))
    assert reads, "the recorder saw no read"
    lean = _lean(kind, whole)
    # A path the readers went on into is checked by the paths under it; one they kept (e.g. a binding's
    # podSelector, kept raw) or compared is checked whole.
    ends = [path for path in reads if not any(other[:len(path)] == path and other != path for other in reads)]
    lost = sorted(path for path in ends if _at(whole, path) != _at(lean, path))
    assert not lost, f"{kind}: fields read but not kept: {lost}"
    assert [read(lean) for read in READERS[kind]] == [read(whole) for read in READERS[kind]]


def test_what_is_never_read_is_dropped() -> None:
    lean = _lean("pods", POD)
    assert "managedFields" not in lean["metadata"] and "containers" not in lean["spec"] and "podIPs" not in lean["status"]
    assert lean["status"]["containerStatuses"] == [{"restartCount": 2}, {"restartCount": 1}]
    assert _lean("bindings", BINDING)["status"] == {"observedGeneration": 3}


def test_absent_and_null_fields_read_as_absent() -> None:
    lean = _lean("pods", {"metadata": {"name": "p", "labels": None}, "status": {"podIP": None}})
    assert lean == {"metadata": {"name": "p"}, "status": {}}
    assert facts.pod_facts(lean) == facts.pod_facts({"metadata": {"name": "p", "labels": None}, "status": {"podIP": None}})


def test_a_page_that_is_not_a_list_is_refused() -> None:
    with pytest.raises(ValueError, match="not a list of pods"):
        shapes.decode_page("pods", b'{"items": {"a": 1}}')
    with pytest.raises(ValueError, match="not a list of pods"):
        shapes.decode_page("pods", b"<html>")
