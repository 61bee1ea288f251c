"""``kubectl podiam status``: the installation at a glance, from API objects and the operator's published state."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from podiam_operator._core import facts
from podiam_operator.cli import api, model, why


@dataclasses.dataclass
class Inputs:
    published: model.Published
    podiam_namespace: str | None
    peering: api.Body | api.Hidden
    nodes: list[api.Body] | api.Hidden
    podiam_pods: list[api.Body] | api.Hidden
    bindings: list[api.Body] | api.Hidden
    events: list[api.Body] | api.Hidden


async def gather(client: api.Api, podiam_namespace: str | None, peering: str) -> Inputs:
    published, found_in = await model.find_published(client, podiam_namespace)
    where = found_in or "podiam-system"
    peer, nodes, pods, bindings, events = await asyncio.gather(
        client.peering(peering), client.nodes(), client.pods(where), client.bindings(), client.events(where))
    return Inputs(published, found_in, peer, nodes, pods, bindings, events)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def explain(inputs: Inputs, now: datetime.datetime) -> dict[str, Any]:
    pub = inputs.published
    doc = pub.document
    not_shown: list[str] = [pub.problem] if pub.problem else []
    for hidden in (inputs.peering, inputs.nodes, inputs.podiam_pods, inputs.bindings, inputs.events):
        if isinstance(hidden, api.Hidden):
            not_shown.append(hidden.text)

    replicas = []
    if not isinstance(inputs.peering, api.Hidden):
        for identity, info in sorted(_mapping(inputs.peering.get("status")).items()):
            info = _mapping(info)
            seen = model.parse_time(info.get("lastseen"))
            lifetime = float(info.get("lifetime") or 60)
            alive = seen is not None and (now - seen).total_seconds() < lifetime
            replicas.append({"identity": identity, "priority": info.get("priority"), "lastSeen": info.get("lastseen"),
                             "alive": alive, "active": identity == doc.get("replica") and not pub.stale(now)})
    aws = _mapping(doc.get("aws"))
    tls = _mapping(doc.get("tls"))
    operator = {
        "published": pub.found, "activeReplica": doc.get("replica") if pub.found and not pub.stale(now) else None,
        "pod": doc.get("pod"), "phase": doc.get("phase"), "updated": doc.get("updated"),
        "stale": pub.stale(now) if pub.found else None,
        "callerArn": aws.get("callerArn"), "baseArn": aws.get("baseArn"), "identityError": aws.get("identityError"),
        "replicas": replicas,
    }
    tls_events = []
    if not isinstance(inputs.events, api.Hidden):
        for event in inputs.events:
            if str(event.get("reason", "")).startswith("TLS") or "certificate" in str(event.get("message", "")).lower():
                tls_events.append({"type": event.get("type"), "reason": event.get("reason"), "message": event.get("message"),
                                   "last": event.get("lastTimestamp") or event.get("eventTime")})
    tls_report = {"ok": tls.get("ok"), "message": tls.get("message"),
                  "clientCertificateExpires": tls.get("clientCertificateExpires"), "caExpires": tls.get("caExpires"),
                  "events": sorted(tls_events, key=lambda e: str(e["last"] or ""))[-5:]}

    taint = str(doc.get("nodeTaint") or "podiam.io/agent-not-ready")
    pods = [] if isinstance(inputs.podiam_pods, api.Hidden) else inputs.podiam_pods
    by_node: dict[str, list[api.Body]] = collections.defaultdict(list)
    for body in pods:
        node = _mapping(body.get("spec")).get("nodeName")
        if node:
            by_node[str(node)].append(body)
    nodes = []
    node_bodies = [] if isinstance(inputs.nodes, api.Hidden) else inputs.nodes
    names = sorted({str(_mapping(n.get("metadata")).get("name")) for n in node_bodies} | set(_mapping(doc.get("proxies"))))
    bodies = {str(_mapping(n.get("metadata")).get("name")): n for n in node_bodies}
    for name in names:
        held = pub.proxy(name)
        proxy = why.proxy_of(by_node.get(name, []), held)
        node_body = bodies.get(name)
        nodes.append({
            "node": name,
            "startupTaint": facts.node_has_taint(node_body, taint) if node_body is not None else None,
            "proxyPod": proxy.pod_name if proxy else None,
            "proxyReady": proxy.ready if proxy else None,
            "synced": held.get("synced") if held else None,
            "pods": held.get("pods") if held else None,
            "roles": held.get("roles") if held else None,
            "lastPush": held.get("lastPush") if held else None,
            "lastPushAgo": model.ago(model.parse_time(held.get("lastPush")), now) if held else None,
            "lastError": held.get("lastError") if held else None,
        })
    roles_report = []
    for arn, entry in sorted(_mapping(doc.get("roles")).items()):
        entry = _mapping(entry)
        roles_report.append({"roleArn": arn, "state": entry.get("state"), "expiration": entry.get("expiration"),
                             "expiresIn": model.ago(model.parse_time(entry.get("expiration")), now) if entry.get("expiration") else None,
                             "pods": entry.get("pods"), "credentialSets": entry.get("credentialSets"),
                             "reason": entry.get("reason"), "message": entry.get("message")})
    phases: collections.Counter[str] = collections.Counter()
    troubled = []
    for body in [] if isinstance(inputs.bindings, api.Hidden) else inputs.bindings:
        status = _mapping(body.get("status"))
        phase = str(status.get("phase") or "NoStatus")
        phases[phase] += 1
        if phase not in ("Bound",):
            meta = _mapping(body.get("metadata"))
            ready: Any = next((c for c in status.get("conditions") or [] if _mapping(c).get("type") == "Ready"), {})
            troubled.append({"binding": f"{meta.get('namespace')}/{meta.get('name')}", "phase": phase,
                             "reason": _mapping(ready).get("reason"), "message": status.get("message")})
    return {
        "podiamNamespace": inputs.podiam_namespace,
        "operator": operator,
        "tls": tls_report,
        "nodes": nodes,
        "taintedNodes": [n["node"] for n in nodes if n["startupTaint"]],
        "roles": roles_report,
        "bindings": {"byPhase": dict(sorted(phases.items())), "notBound": troubled},
        "notShown": not_shown,
    }


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return out


def _yn(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else "?"


def render(report: Mapping[str, Any]) -> str:
    op = report["operator"]
    lines = []
    if op["published"]:
        active = op["activeReplica"] or "NONE (status stale: no active operator?)"
        lines.append(f"Operator: active {active} ({op['phase']}), status written {op['updated']}")
        lines.append(f"  AWS identity: {op['callerArn'] or 'unknown'}" + (f"; ERROR {op['identityError']}" if op["identityError"] else "")
                     + f"; role names resolve against {op['baseArn'] or 'unknown'}")
    else:
        lines.append("Operator: no published status")
    if op["replicas"]:
        lines += ["  " + line for line in table(["REPLICA", "ALIVE", "ACTIVE", "LAST SEEN"],
                                                  [[r["identity"], _yn(r["alive"]), _yn(r["active"]), r["lastSeen"]] for r in op["replicas"]])]
    tls = report["tls"]
    lines.append("")
    lines.append(f"TLS: {'ok' if tls['ok'] else 'NOT OK' if tls['ok'] is False else 'unknown'}"
                 + (f" - {tls['message']}" if tls["message"] else ""))
    lines.append(f"  operator client certificate expires {tls['clientCertificateExpires'] or '?'}; CA expires {tls['caExpires'] or '?'}")
    for event in tls["events"]:
        lines.append(f"  {event['type']} {event['reason']}: {event['message']}")
    lines.append("")
    lines.append("Nodes:")
    lines += ["  " + line for line in table(
        ["NODE", "TAINT", "PROXY", "READY", "SYNCED", "PODS", "ROLES", "LAST PUSH", "ERROR"],
        [[n["node"], "yes" if n["startupTaint"] else "no" if n["startupTaint"] is False else "?", n["proxyPod"], _yn(n["proxyReady"]),
          _yn(n["synced"]), n["pods"], n["roles"], n["lastPushAgo"], n["lastError"]] for n in report["nodes"]])]
    lines.append(f"  tainted (start-up taint): {', '.join(report['taintedNodes']) or 'none'}")
    lines.append("")
    lines.append("Roles (credentials held by the operator):")
    lines += ["  " + line for line in table(
        ["ROLE", "STATE", "EXPIRES", "PODS", "LAST STS ERROR"],
        [[r["roleArn"], r["state"], r["expiresIn"], r["pods"], f"{r['reason']}: {r['message']}" if r["reason"] else None]
         for r in report["roles"]])]
    lines.append("")
    phases = report["bindings"]["byPhase"]
    lines.append("Bindings: " + (", ".join(f"{k} {v}" for k, v in phases.items()) or "none"))
    for b in report["bindings"]["notBound"][:20]:
        lines.append(f"  {b['binding']}: {b['phase']} {b['reason'] or ''} {b['message'] or ''}".rstrip())
    if report["notShown"]:
        lines.append("")
        lines.append("Not shown:")
        lines += [f"  {text}" for text in report["notShown"]]
    return "\n".join(lines)
