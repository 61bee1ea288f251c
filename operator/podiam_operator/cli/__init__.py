"""``kubectl podiam``: why a pod has (no) credentials, the installation's state, who holds a role.

A kubectl plugin (the ``kubectl-podiam`` console script). It reads only what
``kubectl get`` can, with the user's kubeconfig and RBAC: pods, namespaces,
ServiceAccounts, PodRoleBindings, nodes, Events, kopf's peering object and the
active operator's status ConfigMap (:mod:`podiam_operator._core.published`).
It never reads Secrets and never talks to the proxies or the operator
directly. It decides with the operator's own code (``_core``), never its own.
"""
