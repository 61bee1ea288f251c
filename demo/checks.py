"""The demo checks its own results: a step that did not behave as the guide says fails the run."""

from __future__ import annotations


class DemoFailure(RuntimeError):
    """A step did not behave as expected; the message says what was seen."""


def expect(condition: object, what: str) -> None:
    if not condition:
        raise DemoFailure(what)
