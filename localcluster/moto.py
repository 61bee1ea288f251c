"""moto's real HTTP server (``moto_server``) as STS, behind a counting, fault-injecting front.

The operator talks to :class:`StsFront` (``localcluster.sts_front``, a real
process), which forwards to moto_server. The front counts requests by STS
action (moto keeps no readable per-call log), and can inject throttling, 5xx,
latency and per-role AccessDenied, for the fault tests.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from localcluster import ports, processes

ACCOUNT_ID = "123456789012"  # moto's default account


class MotoServer:
    """moto_server itself; tests usually reach it through :class:`StsFront`."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1") -> None:
        self.port = ports.free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.process = processes.ManagedProcess(
            "moto_server",
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(self.port)],
            workdir / "moto_server.log",
        )

    def start(self) -> MotoServer:
        self.process.start()
        self.process.wait_http(f"{self.url}/moto-api/", timeout=60)
        return self

    def stop(self) -> None:
        self.process.stop()


class StsFront:
    """The STS endpoint the operator is given: counts actions, injects faults."""

    def __init__(self, workdir: Path, upstream: str, host: str = "127.0.0.1") -> None:
        self.port = ports.free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.process = processes.ManagedProcess(
            "sts_front",
            [sys.executable, "-m", "localcluster.sts_front", "--host", host, "--port", str(self.port), "--upstream", upstream],
            workdir / "sts_front.log",
        )

    def start(self) -> StsFront:
        self.process.start()
        self.process.wait_http(f"{self.url}/_front/stats", timeout=30)
        return self

    def stop(self) -> None:
        self.process.stop()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.load(response))

    def stats(self) -> dict[str, Any]:
        """``{"actions": {"AssumeRole": n, ...}, "assumed": {role_arn: n}, "injected": {...}}``."""
        return self._call("GET", "/_front/stats")

    def issued_keys(self) -> dict[str, str]:
        """Every AccessKeyId issued by AssumeRole through this front -> the RoleArn it was assumed for."""
        return {str(k): str(v) for k, v in self._call("GET", "/_front/keys").items()}

    def assume_role_calls(self, role_arn: str | None = None) -> list[dict[str, Any]]:
        """AssumeRole requests forwarded to moto since the last stats reset, oldest first:
        ``{"RoleArn", "RoleSessionName", "ExternalId" (None: absent), "Tags": {key: value}, "TransitiveTagKeys": [...], "Caller": the signing
        access key id, "Region": the signature's region}``."""
        calls: list[dict[str, Any]] = self._call("GET", "/_front/calls")["calls"]
        return [call for call in calls if role_arn is None or call["RoleArn"] == role_arn]

    def assume_role_count(self, role_arn: str | None = None) -> int:
        stats = self.stats()
        if role_arn is None:
            return int(stats["actions"].get("AssumeRole", 0))
        return int(stats["assumed"].get(role_arn, 0))

    def set_faults(
        self,
        *,
        error_rate: float = 0.0,
        error_status: int = 503,
        error_code: str = "ServiceUnavailable",
        latency: float = 0.0,
        deny_roles: str | None = None,
        fail_first: int = 0,
        fail_roles: str | None = None,
        seed: int | None = None,
    ) -> None:
        """Inject faults into every following request.

        ``error_rate``: fraction of requests answered with ``error_status`` /
        ``error_code`` (400 + ``Throttling`` for throttling), drawn from a
        generator seeded with ``seed`` (None: unseeded); ``fail_first``: the
        next that many requests get that error, for certain; ``fail_roles``:
        a regex of role ARNs limiting both to their AssumeRole requests;
        ``latency``: seconds added to every request; ``deny_roles``: a regex
        of role ARNs whose AssumeRole gets 403 AccessDenied.
        """
        self._call("PUT", "/_front/faults", {
            "error_rate": error_rate, "error_status": error_status, "error_code": error_code,
            "latency": latency, "deny_roles": deny_roles, "fail_first": fail_first, "fail_roles": fail_roles, "seed": seed,
        })

    def clear_faults(self) -> None:
        self.set_faults()

    def reset_stats(self) -> None:
        self._call("DELETE", "/_front/stats")
