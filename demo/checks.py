"""The demo checks its own results: a step that did not behave as the guide says fails the run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from localcluster.controlplane import controlplane
from localcluster import moto

T = TypeVar("T")

# What the guide's test chapter shows: the AWS CLI in the pod is the assumed KiamTesterRole, and once the
# annotation is gone the same command finds no credentials at all.
ASSUMED_ROLE_ARN = re.compile(rf"^arn:aws:sts::{moto.ACCOUNT_ID}:assumed-role/KiamTesterRole/[\w+=,.@-]+$")
NO_CREDENTIALS = "Unable to locate credentials"


class DemoFailure(RuntimeError):
    """A step did not behave as expected; the message says what was seen."""


def expect(condition: object, what: str) -> None:
    if not condition:
        raise DemoFailure(what)


def eventually(check: Callable[[], T], timeout: float, what: str) -> T:
    """``check()``'s first truthy result within ``timeout`` seconds, else a failed step."""
    try:
        return controlplane.wait_until(check, timeout, what, interval=0.2)
    except TimeoutError as error:
        raise DemoFailure(str(error)) from None


def role_served(results: Sequence[Mapping[str, Any]]) -> None:
    """demo/imds_probe.py's token, role listing and credentials: the pod's role, with temporary credentials."""
    statuses = [r.get("status") for r in results]
    expect(statuses == [200, 200, 200], f"metadata requests answered {statuses}, expected 200 three times")
    expect(results[1]["body"].strip() == "KiamTesterRole", f"role listing was {results[1]['body']!r}")
    document = json.loads(results[2]["body"])
    expect(document.get("Code") == "Success" and document.get("AccessKeyId", "").startswith("ASIA"),
           "the credentials document is not a successful one with temporary credentials")
