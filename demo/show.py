"""What the demo prints: numbered steps, the commands it runs and their real output, checks.

Plain ASCII and flushed at once, so ``make demo`` shows each step as it
happens, in any terminal or CI log. Secrets never reach the screen: every
credential shown goes through :func:`mask` first.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable, Mapping
from typing import Any

_started = time.monotonic()
_steps = 0
SECRET_FIELDS = ("SecretAccessKey", "Token", "SessionToken")


def _print(text: str = "") -> None:
    print(text, flush=True)


def elapsed() -> float:
    return time.monotonic() - _started


def step(title: str) -> None:
    global _steps
    _steps += 1
    _print()
    _print(f"==> {_steps}. {title}  [{elapsed():.1f}s]")


def say(text: str) -> None:
    for line in text.splitlines() or [""]:
        _print(f"    {line}")


def command(argv: Iterable[str], prompt: str = "$") -> None:
    """Echo a command as a user would type it."""
    line(" ".join(shlex.quote(a) for a in argv), prompt)


def line(text: str, prompt: str = "$") -> None:
    """Echo a command line written out by hand (quoted as in the guide)."""
    _print(f"  {prompt} {text}")


def output(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        _print(f"    {line}")


def ok(text: str) -> None:
    _print(f"  [ok] {text}")


def fail(text: str) -> None:
    _print(f"  [FAILED] {text}")


def mask_value(value: str, keep: int = 4) -> str:
    return f"{value[:keep]}...({len(value)} chars, masked)" if len(value) > keep else "(masked)"


def mask(document: Mapping[str, Any]) -> dict[str, Any]:
    """A credentials document with its secrets masked (the access key id keeps its first 4 characters)."""
    masked = dict(document)
    for key in SECRET_FIELDS:
        if key in masked:
            masked[key] = "(masked)"
    if "AccessKeyId" in masked:
        masked["AccessKeyId"] = mask_value(str(masked["AccessKeyId"]))
    return masked


def mask_json(text: str) -> str:
    """Pretty JSON with secrets masked; text that is not a JSON object is returned unchanged."""
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if not isinstance(document, dict):
        return text
    return json.dumps(mask(document), indent=2)


def metadata_requests(results: Iterable[Mapping[str, Any]], base: str, prompt: str) -> None:
    """demo/imds_probe.py's results as the requests and answers curl would show, secrets masked."""
    for result in results:
        command([result["method"], base + result["path"]], prompt=prompt)
        if "error" in result:
            output(result["error"])
            continue
        body = result["body"]
        if result["path"].endswith("/api/token") and result["status"] == 200:
            body = mask_value(body)
        output(f"HTTP {result['status']}\n{mask_json(body)}".rstrip())
