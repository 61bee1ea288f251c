"""``kubectl podiam who ROLE``: the pods that hold a role, those that name it and do not get it, the namespaces that permit it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from podiam_operator._core import facts, roles
from podiam_operator.cli import api, model, status


@dataclasses.dataclass
class Inputs:
    published: model.Published
    pods: list[api.Body] | api.Hidden
    namespaces: list[api.Body] | api.Hidden
    bindings: list[api.Body] | api.Hidden
    service_accounts: list[api.Body] | api.Hidden | None


async def gather(client: api.Api, podiam_namespace: str | None) -> Inputs:
    published, _ = await model.find_published(client, podiam_namespace)
    accounts = client.service_accounts() if published.config.irsa else asyncio.sleep(0, None)
    pods, namespaces, bindings, service_accounts = await asyncio.gather(
        client.pods(), client.namespaces(), client.bindings(), accounts)
    return Inputs(published, pods, namespaces, bindings, service_accounts)


def explain(inputs: Inputs, role: str) -> dict[str, Any]:
    pub = inputs.published
    not_shown = [pub.problem] if pub.problem else []
    try:
        wanted = roles.resolve(role, pub.base)
    except roles.RoleError as error:
        return {"role": role, "error": str(error), "holds": [], "refused": [], "permittedIn": [], "notShown": not_shown}
    world = pub.world()
    for hidden in (inputs.pods, inputs.namespaces, inputs.bindings, inputs.service_accounts):
        if isinstance(hidden, api.Hidden):
            not_shown.append(hidden.text)
    for body in [] if isinstance(inputs.namespaces, api.Hidden) else inputs.namespaces:
        world.set_namespace(facts.namespace_policy(body, pub.reader))
    for body in inputs.service_accounts if isinstance(inputs.service_accounts, list) else []:
        account = facts.service_account_facts(body)
        if account.role is not None:
            world.set_service_account(account)
    for body in [] if isinstance(inputs.bindings, api.Hidden) else inputs.bindings:
        world.set_binding(facts.binding_facts(body))
    for body in [] if isinstance(inputs.pods, api.Hidden) else inputs.pods:
        world.set_pod(facts.pod_facts(body, pub.reader))
    holds, refused = [], []
    for key in sorted(world.decisions):
        decision, pod = world.decisions[key], world.pods[key]
        if pod.finished:
            continue
        row: dict[str, Any] = {"pod": f"{pod.namespace}/{pod.name}", "node": pod.node, "ip": pod.ip, "source": decision.source,
                               "bindings": list(decision.bindings)}
        if decision.grant is not None and decision.grant.role.arn == wanted.arn:
            conflict = world.ip_conflict(key)
            proxy = pub.proxy(pod.node) if pod.node else None
            row["served"] = (conflict is None and (pod.ip is not None or pod.host_network) and bool(proxy and proxy.get("synced"))
                             if pub.found else None)
            row["note"] = conflict or ("not scheduled" if pod.node is None else "no IP yet" if pod.ip is None and not pod.host_network
                                       else "container-credentials path only" if pod.host_network else "")
            holds.append(row)
        elif decision.outcome in ("denied", "conflict", "error") and _names(decision.message, wanted, pod):
            row["reason"], row["message"] = decision.reason, decision.message
            refused.append(row)
    permitted = sorted(name for name, namespace in world.namespaces.items() if namespace.check(wanted, pub.base).allowed)
    summary = pub.role(wanted.arn)
    return {"role": role, "roleArn": wanted.arn, "holds": holds, "refused": refused, "permittedIn": permitted,
            "credentials": dict(summary) if summary else None, "notShown": not_shown}


def _names(message: str, wanted: roles.RoleRef, pod: facts.PodFacts) -> bool:
    """Does a refused pod ask for this role (its annotation, or the refusal's message, names it)?"""
    return wanted.arn in message or (pod.role is not None and (pod.role == wanted.arn or pod.role.lstrip("/") == wanted.path_and_name))


def render(report: Mapping[str, Any]) -> str:
    if report.get("error"):
        return f"{report['role']}: {report['error']}"
    lines = [f"Role {report['roleArn']}"]
    cred = report.get("credentials")
    if cred:
        lines.append(f"  credentials: {cred.get('state')}, expire {cred.get('expiration') or '-'}"
                     + (f"; last STS error {cred.get('reason')}: {cred.get('message')}" if cred.get("reason") else ""))
    lines.append("")
    lines.append(f"Pods that hold it ({len(report['holds'])}):")
    if report["holds"]:
        lines += ["  " + line for line in status.table(
            ["POD", "NODE", "IP", "SOURCE", "SERVED", "NOTE"],
            [[h["pod"], h["node"], h["ip"], h["source"], {True: "yes", False: "no"}.get(h["served"], "?"), h["note"] or None]
             for h in report["holds"]])]
    lines.append("")
    lines.append(f"Pods that ask for it and are refused ({len(report['refused'])}):")
    for r in report["refused"]:
        lines.append(f"  {r['pod']} (node {r['node'] or '-'}): {r['reason']}: {r['message']}")
    lines.append("")
    lines.append(f"Namespaces whose policy permits it (any pod there may be given it): {', '.join(report['permittedIn']) or 'none'}")
    if report["notShown"]:
        lines.append("")
        lines.append("Not shown:")
        lines += [f"  {text}" for text in report["notShown"]]
    return "\n".join(lines)
