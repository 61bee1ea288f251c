"""Where the cluster's default role (``--default-role``) applies: said in the log, never in Events (most pods would get one)."""

from __future__ import annotations

import logging

from podiam_operator._core import world

logger = logging.getLogger(__name__)


class DefaultRoleNotes:
    def __init__(self, model: world.World) -> None:
        self._world = model
        self._refused: dict[str, str] = {}  # namespace -> why the cluster's default role does not apply there

    def note(self, namespace: str) -> None:
        """The log says, when it changes, whether the default role applies in the namespace."""
        refusal = self._world.cluster_default_refusal(namespace)
        if refusal == self._refused.get(namespace):
            return
        if refusal is None:
            self._refused.pop(namespace, None)
            logger.info("namespace %s: the cluster's default role %s applies to its pods that get no other role",
                        namespace, self._world.config.default_role)
        else:
            self._refused[namespace] = refusal
            logger.info("namespace %s: the cluster's default role does not apply to its pods: %s", namespace, refusal)

    def note_everywhere(self) -> None:
        """At start (once the account is known): one line for the whole cluster, then one per namespace that changes."""
        if self._world.config.default_role is None or self._world.base is None:
            return
        refusals = {n: r for n in self._world.namespaces if (r := self._world.cluster_default_refusal(n)) is not None}
        self._refused = refusals
        logger.info("the cluster's default role %s applies in %d namespace(s); not in %d, whose policy does not permit it%s",
                    self._world.config.default_role, len(self._world.namespaces) - len(refusals), len(refusals),
                    (": " + ", ".join(sorted(refusals)[:20]) + (" ..." if len(refusals) > 20 else "")) if refusals else "")

    def forget(self, namespace: str) -> None:
        self._refused.pop(namespace, None)
