"""What a pod's ``curl http://169.254.169.254/...`` would do, as JSON the demo can check and print.

Run *as the pod* (inside its network namespace, or bound to its loopback
address): ``python -m demo.imds_probe HOST PORT [--source IP] [--until-status N --timeout S]``.
It asks for an IMDSv2 token, lists the role, fetches its credentials, and
prints one JSON list of ``{"method", "path", "status", "body"}`` (or
``"error"``). With ``--until-status`` it repeats the listing until it gets
that status and reports how long that took (the revocation check).

Standard library only: it runs with whatever Python the pod has.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from typing import Any

TOKEN_PATH = "/latest/api/token"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"


def call(host: str, port: int, source: str | None, method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    connection = http.client.HTTPConnection(host, port, timeout=2, source_address=(source, 0) if source else None)
    result: dict[str, Any] = {"method": method, "path": path}
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        result |= {"status": response.status, "body": response.read().decode(errors="replace")}
    except (OSError, http.client.HTTPException) as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return result


def session(host: str, port: int, source: str | None) -> list[dict[str, Any]]:
    """Token, role listing, credentials: what an SDK does."""
    token = call(host, port, source, "PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    results = [token]
    headers = {"X-aws-ec2-metadata-token": token["body"]} if token.get("status") == 200 else {}
    listing = call(host, port, source, "GET", CREDENTIALS_PATH, headers)
    results.append(listing)
    if listing.get("status") == 200 and listing["body"].strip():
        role = listing["body"].strip().splitlines()[0]
        results.append(call(host, port, source, "GET", CREDENTIALS_PATH + role, headers))
    return results


def until_status(host: str, port: int, source: str | None, status: int, timeout: float) -> dict[str, Any]:
    began = time.monotonic()
    while True:
        listing = call(host, port, source, "GET", CREDENTIALS_PATH, {})
        waited = time.monotonic() - began
        if listing.get("status") == status or waited > timeout:
            return listing | {"waited": round(waited, 3)}
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--source", help="source address to bind (the pod's IP on loopback)")
    parser.add_argument("--until-status", type=int)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    if args.until_status is not None:
        print(json.dumps([until_status(args.host, args.port, args.source, args.until_status, args.timeout)]))
    else:
        print(json.dumps(session(args.host, args.port, args.source)))


if __name__ == "__main__":
    main()
