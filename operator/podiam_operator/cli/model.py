"""What the active operator published (its ConfigMap), read back; shared by the plugin's commands."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from metadata_proxy import wire
from podiam_operator._core import decide, facts, published, roles, world
from podiam_operator.cli import api


def parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return wire.parse_rfc3339(value)


def ago(moment: datetime.datetime | None, now: datetime.datetime) -> str:
    """``12s ago``, ``in 54m``: for people (JSON keeps the timestamps)."""
    if moment is None:
        return "never"
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    text = f"{span:.0f}s" if span < 120 else f"{span / 60:.0f}m" if span < 7200 else f"{span / 3600:.0f}h" if span < 172800 \
        else f"{span / 86400:.0f}d"
    return f"in {text}" if seconds > 0 else f"{text} ago"


@dataclasses.dataclass(frozen=True)
class Published:
    """The ConfigMap's document, or why there is none (``problem``)."""

    document: Mapping[str, Any]
    decisions: published.Decisions
    base: roles.BaseArn | None
    updated: datetime.datetime | None
    problem: str | None = None  # set: the plugin decides with defaults, and says so

    @property
    def found(self) -> bool:
        return self.problem is None

    def stale(self, now: datetime.datetime) -> bool:
        """No write for three heartbeats: no active operator (or one that cannot write)."""
        if self.updated is None:
            return True
        return (now - self.updated).total_seconds() > 3 * published.HEARTBEAT_SECONDS

    def proxy(self, node: str) -> Mapping[str, Any] | None:
        proxies = self.document.get("proxies")
        entry = proxies.get(node) if isinstance(proxies, Mapping) else None
        if entry is None and self.document.get("proxiesOmitted"):
            # A large cluster's document lists only the proxies that need a look: the others were synced.
            return {"synced": True}
        return entry if isinstance(entry, Mapping) else None

    def role(self, arn: str) -> Mapping[str, Any] | None:
        found = self.document.get("roles")
        entry = found.get(arn) if isinstance(found, Mapping) else None
        return entry if isinstance(entry, Mapping) else None

    def world(self) -> world.World:
        """An empty model of the cluster with the operator's own settings, for the operator's own decision code."""
        own = None
        if self.decisions.own_namespace and self.decisions.own_service_account:
            own = world.OwnPods(self.decisions.own_namespace, self.decisions.own_service_account)
        return world.World(self.decisions.config, self.base, own, self.decisions.reader.rules)

    @property
    def reader(self) -> facts.Reader:
        return self.decisions.reader

    @property
    def config(self) -> decide.Config:
        return self.decisions.config


def published_from(config_map: api.Body | api.Hidden, where: str) -> Published:
    if isinstance(config_map, api.Hidden):
        problem = (f"{config_map.text}: the operator's settings and state are unknown, so decisions below use the "
                   "operator's defaults (see `kubectl podiam status`)")
        return Published({}, published.decode_decisions({}), None, None, problem)
    raw = (config_map.get("data") or {}).get(published.KEY)
    try:
        document = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return Published({}, published.decode_decisions({}), None, None, f"configmap {where}: no readable {published.KEY}")
    return Published(document, published.decode_decisions(document.get("decisions") or {}),
                     published.decode_base((document.get("aws") or {}).get("baseArn")), parse_time(document.get("updated")))


async def find_published(client: api.Api, namespace: str | None) -> tuple[Published, str | None]:
    """The status ConfigMap: in ``namespace``, else podiam-system, else wherever a list finds it. (document, its namespace)."""
    tried: list[api.Hidden] = []
    for candidate in [namespace] if namespace else ["podiam-system"]:
        found = await client.config_map(candidate, published.CONFIGMAP)
        if not isinstance(found, api.Hidden):
            return published_from(found, f"{candidate}/{published.CONFIGMAP}"), candidate
        tried.append(found)
    if namespace is None:
        listed = await client.config_maps(f"metadata.name={published.CONFIGMAP}")
        if not isinstance(listed, api.Hidden) and listed:
            where = str((listed[0].get("metadata") or {}).get("namespace"))
            return published_from(listed[0], f"{where}/{published.CONFIGMAP}"), where
    return published_from(tried[0], ""), namespace
