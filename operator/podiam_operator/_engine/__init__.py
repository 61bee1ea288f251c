"""The engine: the world model wired to the credential cache, the pushers and the Kubernetes API.

Its watches feed it facts; it works out the consequences. Each job has its module:

- :mod:`.engine`: facts in (pods, namespaces, ServiceAccounts, bindings, proxies,
  nodes), the start (leadership, the operator's own AWS identity, warm-up) and
  what a change of the world sets off;
- :mod:`.supply`: credentials from the cache to the proxies (what each node's
  pusher reads, fetches, renewals and their failures);
- :mod:`.statuses`: PodRoleBindings' status, and the phase gauge;
- :mod:`.owned`: the PodRoleBindings made for annotated pods;
- :mod:`.watches`: the kinds it decides from, watched from the start-up listing on
  (listed again, deletions included, when a watch cannot resume);
- :mod:`.taints`: the start-up taint, lifted once a node's proxy is synced;
- :mod:`.events`: Events, each posted once;
- :mod:`.defaults`: where the cluster's default role applies (log lines);
- :mod:`.publisher`: the active replica's state for ``kubectl podiam``;
- :mod:`.ports`: what the engine needs of the API client, the pushers and leadership.

Everything slow (STS, pushes, API writes) runs in background tasks
(:mod:`.tasks`), so a change is taken at once and one slow part never holds
up another.
"""

from podiam_operator._engine.engine import Engine, Indexes, Phase

__all__ = ["Engine", "Indexes", "Phase"]
