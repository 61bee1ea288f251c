"""The reasons are one enumeration: the README's table and the CRD's phases say what the code says; a refusal's
Event is news again after a grant, whichever refusal it was."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from podiam_operator._core import decide, reasons, roles, world
from podiam_operator._core.reasons import Reason
from podiam_operator._engine.events import Events
from podiam_operator._engine.tasks import Tasks
from tests.unit.operator.conftest import namespace, pod

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def test_the_readme_lists_every_reason_and_no_other() -> None:
    text = (REPO / "README.md").read_text()
    section = text.split("\n### Reasons\n", 1)[1].split("\n#", 1)[0]
    listed = {name for row in section.splitlines() if row.startswith("| `")
              for name in re.findall(r"`(\w+)`", row.split(" | ")[0])}
    assert listed == {str(reason) for reason in Reason}


def test_the_crd_lists_the_phases_the_operator_writes() -> None:
    crd = yaml.safe_load((REPO / "crds" / "podrolebindings.podiam.io.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert tuple(status["phase"]["enum"]) == decide.PHASES
    assert decide.FAILED < set(decide.PHASES)


def test_the_groups_are_made_of_reasons() -> None:
    assert reasons.POD_REFUSALS < reasons.POD_EVENTS
    assert Reason.INVALID_EXTERNAL_ID in reasons.POD_REFUSALS and Reason.INVALID_EXTERNAL_ID in reasons.WRITTEN_ERRORS
    assert all(isinstance(reason, Reason) for reason in reasons.POD_EVENTS | reasons.WRITTEN_ERRORS)


class Poster:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []

    async def event(self, ref: dict[str, str], kind: str, reason: str, message: str) -> None:
        self.posted.append((ref["name"], reason))


@pytest.mark.parametrize(("refused", "outcome", "reason"), [
    ({"external_id": "x"}, "error", Reason.INVALID_EXTERNAL_ID),  # the engine's own list once forgot this one
    ({"role": "bad..role/.."}, "error", Reason.INVALID_ROLE),
    ({"host_network": True}, "denied", Reason.HOST_NETWORK),
])
async def test_a_refusal_is_news_again_after_a_grant(refused: dict[str, Any], outcome: str, reason: Reason) -> None:
    model = world.World(decide.Config(container_credentials=False), roles.BaseArn("aws", "123456789012"))
    model.set_namespace(namespace("team", ".*"))
    poster, tasks = Poster(), Tasks()
    events = Events(poster, tasks, model)
    good = pod(name="app", role="MyRole")
    bad = dataclasses.replace(good, **{k: v for k, v in {"external_id": None, "host_network": False, **refused}.items()})

    async def decided(facts: Any) -> None:
        model.set_pod(facts)
        events.pod_decision(facts.key, model.decisions[facts.key])
        await asyncio.sleep(0)  # the Event's task runs

    await decided(bad)
    assert model.decisions[bad.key].outcome == outcome and model.decisions[bad.key].reason == reason
    await decided(bad)
    assert poster.posted == [("app", reason)]  # once
    await decided(good)
    await decided(bad)
    assert poster.posted == [("app", reason), ("app", reason)]
    await tasks.close()
