"""``kubectl podiam why POD``: whether the pod gets credentials and, if not, why, in the order the operator decides.

The decision is the operator's own code (:mod:`podiam_operator._core.world`,
:mod:`decide`, :mod:`policy`, :mod:`roles`) run over the objects the user
may read, with the settings the active operator published
(:mod:`podiam_operator._core.published`); what it wrote (binding statuses,
Events, its ConfigMap) says what it did about it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from podiam_operator._core import decide, facts, policy, reasons, roles
from podiam_operator._core.reasons import Reason
from podiam_operator.cli import api, model

LEVELS = {"explicit": 1, "serviceaccount": 2, "namespace-default": 3, "cluster-default": 4}
_PHASE_OF = {"granted": ("Bound", "Pending"), "denied": ("Denied",), "conflict": ("Conflict",), "error": ("Error",)}


@dataclasses.dataclass
class Inputs:
    pod: api.Body
    namespace: api.Body | api.Hidden
    service_account: api.Body | api.Hidden | None
    bindings: list[api.Body] | api.Hidden
    node: api.Body | api.Hidden | None
    proxy_pods: list[api.Body] | api.Hidden
    node_pods: list[api.Body] | api.Hidden
    events: list[api.Body] | api.Hidden
    published: model.Published
    podiam_namespace: str | None


async def gather(client: api.Api, namespace: str, name: str, podiam_namespace: str | None) -> Inputs | api.Hidden:
    pod = await client.pod(namespace, name)
    if isinstance(pod, api.Hidden):
        return pod
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    node_name = spec.get("nodeName")
    (published, found_in), ns, account, bindings, events = await asyncio.gather(
        model.find_published(client, podiam_namespace),
        client.namespace(namespace),
        client.service_account(namespace, spec.get("serviceAccountName") or "default"),
        client.bindings(namespace),
        client.events(namespace, uid=meta.get("uid")),
    )
    node: api.Body | api.Hidden | None = None
    proxy_pods: list[api.Body] | api.Hidden = []
    node_pods: list[api.Body] | api.Hidden = []
    if node_name:
        node, proxy_pods, node_pods = await asyncio.gather(
            client.node(node_name),
            client.pods(found_in or "podiam-system", field_selector=f"spec.nodeName={node_name}"),
            client.pods(None, field_selector=f"spec.nodeName={node_name}"),
        )
    return Inputs(pod, ns, account, bindings, node, proxy_pods, node_pods, events, published, found_in)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def proxy_of(pods: list[api.Body], held: Mapping[str, Any] | None) -> facts.ProxyFacts | None:
    """A node's proxy among the podiam namespace's pods there: the one the operator pushes to, else one labelled as a proxy."""
    name = held.get("pod") if held is not None else None
    for body in pods:
        meta = _mapping(body.get("metadata"))
        label = str(_mapping(meta.get("labels")).get("app.kubernetes.io/name", ""))
        if (meta.get("name") == name) if name else label.endswith("-proxy"):
            found = facts.proxy_facts(body)
            if found is not None:
                return found
    return None


def explain(inputs: Inputs, now: datetime.datetime) -> dict[str, Any]:
    """The report, as data: ``-o json`` prints it, :func:`render` lays it out for people."""
    pub = inputs.published
    reader, config = pub.reader, pub.config
    pod = facts.pod_facts(inputs.pod, reader)
    not_shown: list[str] = []
    if pub.problem:
        not_shown.append(pub.problem)
    world = pub.world()

    # The namespace's policy; unreadable: the operator's rule for unknown namespaces (deny), said.
    if isinstance(inputs.namespace, api.Hidden):
        not_shown.append(inputs.namespace.text)
        namespace = policy.unknown_namespace(pod.namespace, reader.rules)
    else:
        namespace = facts.namespace_policy(inputs.namespace, reader)
    world.set_namespace(namespace)
    account = None
    if isinstance(inputs.service_account, api.Hidden):
        if inputs.service_account.status != 404:
            not_shown.append(inputs.service_account.text)
    elif inputs.service_account is not None:
        account = facts.service_account_facts(inputs.service_account)
        if config.irsa and account.role is not None:
            world.set_service_account(account)
    bindings = [] if isinstance(inputs.bindings, api.Hidden) else inputs.bindings
    if isinstance(inputs.bindings, api.Hidden):
        not_shown.append(inputs.bindings.text)
    for body in bindings:
        world.set_binding(facts.binding_facts(body))
    if isinstance(inputs.node_pods, api.Hidden):
        not_shown.append(inputs.node_pods.text + " (IP conflicts on the node are not checked)")
    else:
        for other in inputs.node_pods:
            other_facts = facts.pod_facts(other, reader)
            if other_facts.key != pod.key:
                world.set_pod(other_facts)
    world.set_pod(pod)
    decision = world.decisions.get(pod.key, decide.NONE)
    ip_conflict = world.ip_conflict(pod.key) if decision.outcome == "granted" else None

    sources = _sources(pod, namespace, account, world, decision)
    role_arn = decision.grant.role.arn if decision.grant else None
    policy_report = _policy(namespace, sources, pub)
    binding_rows = _bindings(pod, bindings, world)
    node_report = _node(pod, inputs, pub, now, not_shown)
    sts = _sts(role_arn, pub, binding_rows)
    events = _events(inputs.events, not_shown)
    operator = _operator(pub, now)

    served = (decision.outcome == "granted" and pod.alive and (pod.ip is not None or (pod.host_network and config.container_credentials))
              and ip_conflict is None and node_report.get("synced") is not False and sts.get("state") in ("ok", None))
    if decision.outcome == "granted" and sts.get("state") is None and pub.found:
        served = False  # the operator holds no credentials for it (yet)
    verdict, summary = _verdict(pod, decision, ip_conflict, node_report, sts, served)
    operator_says = _operator_says(pod, decision, binding_rows)
    report: dict[str, Any] = {
        "pod": f"{pod.namespace}/{pod.name}",
        "node": pod.node,
        "ip": pod.ip,
        "phase": pod.phase,
        "getsCredentials": bool(served),
        "verdict": verdict,
        "summary": summary,
        "decision": {"outcome": decision.outcome, "reason": decision.reason, "message": decision.message,
                     "level": LEVELS.get(decision.source), "source": decision.source or None, "roleArn": role_arn,
                     "bindings": list(decision.bindings)},
        "sources": sources,
        "policy": policy_report,
        "bindings": binding_rows,
        "hostNetwork": pod.host_network,
        "mirror": pod.mirror,
        "ipConflict": ip_conflict,
        "nodeProxy": node_report,
        "sts": sts,
        "events": events,
        "operator": operator,
        "operatorSays": operator_says,
        "notShown": not_shown,
    }
    report["next"] = _next(report, pod, namespace, pub)
    return report


def _written_role(value: str | None, base: roles.BaseArn | None) -> tuple[str | None, str | None]:
    """(ARN, error) of a role as written."""
    if value is None:
        return None, None
    try:
        return roles.resolve(value, base).arn, None
    except roles.RoleError as error:
        return None, str(error)


def _sources(pod: facts.PodFacts, namespace: policy.NamespacePolicy, account: facts.ServiceAccountFacts | None,
             world: Any, decision: decide.PodDecision) -> list[dict[str, Any]]:
    base, config, reader_key = world.base, world.config, None
    rows: list[dict[str, Any]] = []
    level = LEVELS.get(decision.source)

    def row(lvl: int, source: str, names: str | None, note: str = "") -> None:
        arn, error = _written_role(names, base)
        rows.append({"level": lvl, "source": source, "names": names, "roleArn": arn, "invalid": error, "note": note,
                     "decides": level == lvl and names is not None and not note.startswith("ignored")})

    del reader_key
    row(1, "pod annotation", pod.role)
    for key in sorted(world.evals):
        evaluation = world.evals[key]
        binding = evaluation.binding
        if key[0] != pod.namespace or binding.pod_owned:
            continue
        if evaluation.error is not None:
            if evaluation.selector is not None and evaluation.selects(pod):
                row(1, f"binding {binding.name}", binding.role, f"ignored: unusable ({evaluation.error})")
            continue
        if evaluation.selects(pod) and not binding.deleting:
            row(1, f"binding {binding.name}", binding.role)
    sa_name = f"serviceaccount {pod.service_account}"
    sa_role = account.role if account else None
    if sa_role is not None and not config.irsa:
        row(2, sa_name, sa_role, f"ignored: the operator runs without --irsa-service-accounts, so {facts.IRSA_ANNOTATION} is not read")
    else:
        row(2, sa_name, sa_role)
    row(3, f"namespace {pod.namespace} default", namespace.default_role)
    cluster_note = ""
    if config.default_role is not None:
        refusal = world.cluster_default_refusal(pod.namespace)
        if refusal:
            cluster_note = f"ignored here: {refusal}"
        elif pod.host_network or (pod.mirror and not config.allow_mirror_pods):
            cluster_note = "ignored: defaults never apply to hostNetwork or mirror pods"
    if namespace.default_role is not None and (pod.host_network or (pod.mirror and not config.allow_mirror_pods)):
        rows[-1]["note"] = "ignored: defaults never apply to hostNetwork or mirror pods"
        rows[-1]["decides"] = False
    row(4, "cluster default (--default-role)", config.default_role, cluster_note)
    return rows


def _policy(namespace: policy.NamespacePolicy, sources: list[dict[str, Any]], pub: model.Published) -> dict[str, Any]:
    report: dict[str, Any] = {"permitted": namespace.permitted, "allowedRoles": namespace.allowed_roles,
                              "allowedRolesAnnotation": namespace.rules.allowed_roles_key,
                              "format": namespace.rules.allowed_roles_format, "strict": namespace.rules.strict,
                              "problem": namespace.problem, "checked": None}
    deciding = next((s for s in sources if s["decides"]), None)
    if deciding is None or deciding["roleArn"] is None:
        return report
    role = roles.resolve(deciding["names"], pub.base)
    verdict = namespace.check(role, pub.base)
    report["checked"] = {
        "roleArn": role.arn,
        "matchedAgainst": policy.subject(role, pub.base) if pub.base else None,
        "allowed": verdict.allowed,
        "reason": verdict.reason,
        "message": verdict.message,
    }
    return report


def _bindings(pod: facts.PodFacts, bodies: list[api.Body], world: Any) -> list[dict[str, Any]]:
    rows = []
    for body in bodies:
        binding = facts.binding_facts(body)
        evaluation = world.evals.get(binding.key)
        owned = binding.pod_owned and binding.owner_pod_uid == pod.uid
        selects = owned or (evaluation is not None and not binding.pod_owned and evaluation.usable and evaluation.selects(pod))
        if not selects:
            continue
        status = _mapping(body.get("status"))
        conditions = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
        ready = next((c for c in conditions if c.get("type") == "Ready"), {})
        rows.append({
            "name": binding.name, "ownedByPod": owned, "role": binding.role, "phase": status.get("phase"),
            "reason": ready.get("reason"), "message": status.get("message") or ready.get("message"),
            "roleArn": status.get("roleArn"), "pods": status.get("pods"), "expiration": status.get("expiration"),
            "current": status.get("observedGeneration") == binding.generation,
        })
    return rows


def _node(pod: facts.PodFacts, inputs: Inputs, pub: model.Published, now: datetime.datetime, not_shown: list[str]) -> dict[str, Any]:
    if pod.node is None:
        return {"name": None}
    report: dict[str, Any] = {"name": pod.node}
    taint = _mapping(pub.document).get("nodeTaint") or "podiam.io/agent-not-ready"
    if isinstance(inputs.node, api.Hidden):
        not_shown.append(inputs.node.text)
        report["startupTaint"] = None
    elif inputs.node is not None:
        report["startupTaint"] = facts.node_has_taint(inputs.node, str(taint))
    report["taintKey"] = taint
    if isinstance(inputs.proxy_pods, api.Hidden):
        not_shown.append(inputs.proxy_pods.text)
        proxy_pods: list[api.Body] = []
    else:
        proxy_pods = inputs.proxy_pods
    held = pub.proxy(pod.node)
    proxy = proxy_of(proxy_pods, held)
    report["proxyPod"] = proxy.pod_name if proxy else None
    report["proxyReady"] = proxy.ready if proxy else None
    if held is not None:
        report["synced"] = bool(held.get("synced"))
        report["lastPush"] = held.get("lastPush")
        report["lastPushAgo"] = model.ago(model.parse_time(held.get("lastPush")), now)
        report["lastError"] = held.get("lastError")
        report["podsHeld"] = held.get("pods")
        report["rolesHeld"] = held.get("roles")
    elif pub.found:
        report["synced"] = False
        report["lastError"] = "the operator knows no proxy on this node"
    return report


def _sts(role_arn: str | None, pub: model.Published, bindings: list[dict[str, Any]]) -> dict[str, Any]:
    if role_arn is None:
        return {}
    entry = pub.role(role_arn)
    report: dict[str, Any] = {"roleArn": role_arn, "state": None}
    if entry is not None:
        report.update({"state": entry.get("state"), "expiration": entry.get("expiration"), "reason": entry.get("reason"),
                       "message": entry.get("message"), "credentialSets": entry.get("credentialSets")})
    expirations = [b["expiration"] for b in bindings if b.get("expiration")]
    if expirations:
        report["bindingExpiration"] = min(expirations)
    return report


def _events(events: list[api.Body] | api.Hidden, not_shown: list[str]) -> list[dict[str, Any]]:
    if isinstance(events, api.Hidden):
        not_shown.append(events.text)
        return []
    rows = []
    for event in events:
        source = _mapping(event.get("source")).get("component") or event.get("reportingComponent")
        if source != "podiam-operator" and event.get("reason") not in reasons.POD_EVENTS:
            continue
        rows.append({"type": event.get("type"), "reason": event.get("reason"), "message": event.get("message"),
                     "count": event.get("count") or 1, "last": event.get("lastTimestamp") or event.get("eventTime")})
    rows.sort(key=lambda e: str(e["last"] or ""))
    return rows[-8:]


def _operator(pub: model.Published, now: datetime.datetime) -> dict[str, Any]:
    if not pub.found:
        return {"published": False, "problem": pub.problem}
    aws = _mapping(pub.document.get("aws"))
    return {"published": True, "replica": pub.document.get("replica"), "updated": pub.document.get("updated"),
            "stale": pub.stale(now), "baseArn": aws.get("baseArn"), "identityError": aws.get("identityError")}


def _operator_says(pod: facts.PodFacts, decision: decide.PodDecision, bindings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the operator wrote in the bindings' status, and whether it agrees with the decision above."""
    rows = [b for b in bindings if b["phase"]]
    if not rows:
        return None
    first = next((b for b in rows if b["ownedByPod"]), rows[0])
    expected = _PHASE_OF.get(decision.outcome, ())
    # A granted pod's binding also says what happened next: STS refused (Error), its IP is contested (Conflict).
    after = decision.outcome == "granted" and (first["phase"] == "Error" and first["reason"] not in reasons.WRITTEN_ERRORS
                                               or first["reason"] == Reason.IP_CONFLICT)
    return {"binding": first["name"], "phase": first["phase"], "reason": first["reason"],
            "agrees": first["phase"] in expected or after or first["phase"] == "Pending" and first["reason"] == Reason.NO_PODS and not pod.node}


def _verdict(pod: facts.PodFacts, decision: decide.PodDecision, ip_conflict: str | None, node: Mapping[str, Any],
             sts: Mapping[str, Any], served: bool) -> tuple[str, str]:
    if pod.finished:
        return "finished", f"pod {pod.name} is terminating or finished: its credentials are revoked"
    if decision.outcome == "none":
        return "no-role", f"no source names a role for pod {pod.name}: it gets no credentials (404 at 169.254.169.254)"
    if decision.outcome != "granted":
        return decision.outcome, f"{decision.reason}: {decision.message}"
    arn = decision.grant.role.arn if decision.grant else "?"
    if ip_conflict:
        return "ip-conflict", ip_conflict
    if sts.get("state") == "failed":
        return "sts-error", f"granted {arn}, but STS refuses it: {sts.get('reason')}: {sts.get('message')}"
    if pod.node is None:
        return "pending", f"granted {arn}; the pod is not scheduled yet"
    if node.get("startupTaint"):
        return "node-not-ready", (f"granted {arn}, but node {pod.node} still has the start-up taint {node.get('taintKey')}: "
                                  "its proxy has no snapshot yet")
    if node.get("synced") is False:
        return "proxy-not-synced", (f"granted {arn}, but the proxy on node {pod.node} has not acknowledged the operator's pushes"
                                    + (f" ({node.get('lastError')})" if node.get("lastError") else ""))
    if pod.ip is None and not pod.host_network:
        return "pending", f"granted {arn}; the pod has no IP yet (its proxy already holds the role's credentials to serve it)"
    if not served:
        return "pending", f"granted {arn}; the operator has no credentials for it yet"
    path = "on the container-credentials path only (hostNetwork)" if pod.host_network else "at 169.254.169.254"
    return "served", f"pod {pod.name} gets {arn} {path}"


def _next(report: Mapping[str, Any], pod: facts.PodFacts, namespace: policy.NamespacePolicy, pub: model.Published) -> list[str]:
    verdict, decision = report["verdict"], report["decision"]
    reason = decision["reason"]
    steps: list[str] = []
    checked = report["policy"].get("checked") or {}
    ns = pod.namespace
    if verdict == "no-role":
        steps.append(f"name a role: kubectl annotate pod -n {ns} {pod.name} {pub.reader.role_key}=ROLE, or apply a "
                     "PodRoleBinding whose podSelector or serviceAccountName selects it")
    elif reason == Reason.NAMESPACE_NOT_PERMITTED:
        steps.append(f"permit the role in the namespace (deny by default): kubectl annotate namespace {ns} "
                     f"{policy.PERMITTED_ANNOTATION}='REGEX' (anchored; matched against "
                     f"{checked.get('matchedAgainst') or 'the role name'!r})")
    elif reason == Reason.ROLE_NOT_PERMITTED:
        steps.append(f"the namespace policy does not permit it; it was matched against {checked.get('matchedAgainst')!r}: "
                     f"widen {policy.PERMITTED_ANNOTATION} (or {namespace.rules.allowed_roles_key}) on namespace {ns}, "
                     "or use a permitted role")
    elif reason in (Reason.INVALID_PERMITTED_REGEX, Reason.INVALID_ALLOWED_ROLES):
        steps.append(f"fix the namespace annotation on {ns}: {namespace.problem}")
    elif reason in (Reason.INVALID_ROLE, Reason.INVALID_EXTERNAL_ID):
        steps.append("fix the role as written (IAM's rules: a name, path/name or arn:aws:iam::<12 digits>:role/...); "
                     "it never reaches STS as it is")
    elif reason == Reason.CONFLICTING_BINDINGS:
        steps.append("keep one role for the pod: remove the annotation or a binding, or make the bindings' selectors "
                     "disjoint: " + ", ".join(decision["bindings"]))
    elif reason == Reason.HOST_NETWORK:
        steps.append("hostNetwork pods share the node's IP: run it without hostNetwork, or let the operator serve it on "
                     "the container-credentials path (it runs with --no-container-credentials)")
    elif reason == Reason.MIRROR_POD:
        steps.append("a static pod: run it as a normal pod, or start the operator with --allow-mirror-pods")
    elif reason == Reason.ACCOUNT_NOT_KNOWN:
        steps.append("the operator does not know its AWS account yet: see `kubectl podiam status` (identity error), or set "
                     "--base-role-arn")
    if verdict == "ip-conflict":
        steps.append("delete the stale pod that still claims this IP; the other one is then served")
    if verdict == "sts-error":
        steps.append("make the role trust the operator's role (examples/iam/pod-role-trust-policy.json) and check it exists; "
                     "the operator retries with backoff (--failure-retry-max)")
    if verdict in ("node-not-ready", "proxy-not-synced"):
        steps.append(f"check the proxy on node {pod.node} (kubectl logs of its pod; its TLS Secret) and the operator's log "
                     "(push failed ...)")
    operator = report["operator"]
    if not operator.get("published"):
        steps.append("the operator's status ConfigMap is not readable: pass --podiam-namespace, or ask for get on "
                     "configmaps/podiam-status there")
    elif operator.get("stale"):
        steps.append("the operator has not written its status for a while: is an operator replica running and active? "
                     "(`kubectl podiam status`)")
    says = report.get("operatorSays")
    if says is not None and not says["agrees"]:
        steps.append(f"binding {says['binding']} says {says['phase']} ({says['reason']}): the operator may not have caught up "
                     "yet, or runs with other settings than it published; run again in a few seconds")
    if not steps and verdict == "served":
        steps.append("nothing: if the pod still gets no credentials, the request does not reach the proxy (its "
                     "--host-interface; the proxy's log names pods it does not intercept)")
    if not steps:
        steps.append("wait a few seconds and run again")
    return steps


# --- for people --------------------------------------------------------------------------


def render(report: Mapping[str, Any]) -> str:
    lines: list[str] = []
    mark = "yes" if report["getsCredentials"] else "NO"
    lines.append(f"Pod {report['pod']} (node {report['node'] or '-'}, IP {report['ip'] or '-'}, {report['phase']})")
    lines.append(f"Credentials: {mark} - {report['summary']}")
    lines.append("")
    lines.append("Role sources (the first level naming a role decides):")
    for row in report["sources"]:
        says = row["names"] if row["names"] is not None else "-"
        extra = []
        if row["invalid"]:
            extra.append(f"invalid: {row['invalid']}")
        elif row["roleArn"] and row["roleArn"] != says:
            extra.append(row["roleArn"])
        if row["note"]:
            extra.append(row["note"])
        flag = "  <- decides" if row["decides"] else ""
        lines.append(f"  {row['level']}  {row['source']:<38} {says}{' (' + '; '.join(extra) + ')' if extra else ''}{flag}")
    decision = report["decision"]
    if decision["outcome"] != "none":
        lines.append(f"  decision: {decision['outcome']}" + (f" ({decision['reason']})" if decision["reason"] else "")
                     + (f": {decision['message']}" if decision["message"] and decision["outcome"] != "granted" else ""))
    pol = report["policy"]
    lines.append("")
    lines.append("Namespace policy:")
    lines.append(f"  {policy.PERMITTED_ANNOTATION}: {pol['permitted']!r}" if pol["permitted"] is not None
                 else f"  {policy.PERMITTED_ANNOTATION}: absent")
    if pol["allowedRoles"] is not None:
        lines.append(f"  {pol['allowedRolesAnnotation']}: {pol['allowedRoles']} ({pol['format']})")
    if pol["problem"]:
        lines.append(f"  unusable: {pol['problem']}")
    checked = pol.get("checked")
    if checked:
        verdict = "permitted" if checked["allowed"] else f"REFUSED ({checked['reason']})"
        lines.append(f"  {checked['roleArn']}: {verdict}; matched against {checked['matchedAgainst']!r}")
        if checked["message"]:
            lines.append(f"    {checked['message']}")
    if report["bindings"]:
        lines.append("")
        lines.append("Bindings (status written by the operator):")
        for b in report["bindings"]:
            owned = " (the pod's own)" if b["ownedByPod"] else ""
            lines.append(f"  {b['name']}{owned}: {b['phase'] or 'no status'} {b['reason'] or ''} role {b['role']}"
                         + (f", {b['pods']} pod(s), expires {b['expiration']}" if b["expiration"] else ""))
            if b["message"] and b["phase"] != "Bound":
                lines.append(f"    {b['message']}")
    lines.append("")
    lines.append(f"hostNetwork: {'yes' if report['hostNetwork'] else 'no'}   mirror pod: {'yes' if report['mirror'] else 'no'}"
                 f"   IP conflict: {report['ipConflict'] or 'none'}")
    node = report["nodeProxy"]
    if node.get("name"):
        taint = node.get("startupTaint")
        lines.append(f"Node {node['name']}: start-up taint {'PRESENT' if taint else 'absent' if taint is False else 'unknown'}; "
                     f"proxy pod {node.get('proxyPod') or 'none'} ready={_yn(node.get('proxyReady'))}; "
                     f"holds its snapshot={_yn(node.get('synced'))}"
                     + (f", last push {node.get('lastPushAgo')}" if node.get("lastPush") else "")
                     + (f", {node.get('podsHeld')} pod(s), {node.get('rolesHeld')} role(s)" if node.get("podsHeld") is not None else ""))
        if node.get("lastError"):
            lines.append(f"  last push error: {node['lastError']}")
    sts = report["sts"]
    if sts:
        state = sts.get("state") or "not held by the operator"
        lines.append(f"STS {sts['roleArn']}: {state}" + (f", cached until {sts['expiration']}" if sts.get("expiration") else "")
                     + (f"; last error {sts.get('reason')}: {sts.get('message')}" if sts.get("reason") else ""))
    if report["events"]:
        lines.append("")
        lines.append("Events on the pod:")
        for e in report["events"]:
            lines.append(f"  {e['type']} {e['reason']} (x{e['count']}): {e['message']}")
    operator = report["operator"]
    if operator.get("published"):
        lines.append("")
        lines.append(f"Operator: active replica {operator['replica']}, status written {operator['updated']}"
                     + (" (STALE)" if operator["stale"] else "") + f", account {operator.get('baseArn') or 'unknown'}")
    if report["notShown"]:
        lines.append("")
        lines.append("Not shown:")
        lines.extend(f"  {text}" for text in report["notShown"])
    lines.append("")
    lines.append("Next:")
    lines.extend(f"  - {step}" for step in report["next"])
    return "\n".join(lines)


def _yn(value: Any) -> str:
    return "yes" if value is True else "NO" if value is False else "?"
