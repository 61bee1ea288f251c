"""A tiny synchronous JSON client for the API server (stdlib only), for
test set-up and assertions where kubectl would be clumsy."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class ApiError(RuntimeError):
    """A non-2xx answer: ``status`` is the HTTP status, ``body`` the decoded Status object if any."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.body = body
        self.reason = body.get("reason") if isinstance(body, dict) else None


class Client:
    """Talks to ``server`` with a client certificate, or a bearer token."""

    def __init__(
        self,
        server: str,
        ca_file: Path,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            self.context.load_cert_chain(str(cert_file), str(key_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send ``body`` as JSON; return the decoded answer (a dict for API objects)."""
        data = None if body is None else json.dumps(body).encode()
        if content_type is None:
            content_type = "application/merge-patch+json" if method.upper() == "PATCH" else "application/json"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.server + path, data=data, method=method.upper(), headers=headers)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout or self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                decoded: Any = json.loads(raw)
            except ValueError:
                decoded = raw.decode(errors="replace")
            raise ApiError(method.upper(), path, error.code, decoded) from None
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")
