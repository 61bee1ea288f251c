"""Hostile requests to a real proxy's metadata port: never a 5xx, never credentials for an IP that is not bound.

The proxy's upstream is a fake node metadata service on loopback that
answers every path, including the node's own credentials (a canary key):
whatever a pod sends, the canary must never come back, and the only
credentials an IP may ever see are those of the role bound to it. A
deterministic table covers each abuse by name; a hypothesis run then sends
a few thousand generated requests (methods, paths with traversal and
encodings, forwarded headers, tokens of other IPs, forged and oversized
headers and bodies) from bound and unbound source IPs, over raw sockets so
nothing is normalised on the way.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metadata_proxy import wire
from localcluster import certs, ports
from localcluster.proxy import ProxyProcess, pod_entry, role_credentials

pytestmark = pytest.mark.fault

HOST = "127.0.0.50"
POD_A, POD_B, STRANGER = "127.0.4.1", "127.0.4.2", "127.0.4.3"
CREDS = "/latest/meta-data/iam/security-credentials/"
CANARY_KEY = "ASIACANARYNODEKEY0001"
CANARY_SECRET = "canary-node-secret-never-for-pods"
FUZZ_EXAMPLES = 5000


class _NodeImds(http.server.BaseHTTPRequestHandler):
    """The node's own metadata service: answers everything, node credentials included."""

    def _answer(self) -> None:
        if "security-credentials" in self.path or "iam" in self.path:
            body = json.dumps({"Code": "Success", "AccessKeyId": CANARY_KEY, "SecretAccessKey": CANARY_SECRET,
                               "Token": "canary", "Expiration": "2099-01-01T00:00:00Z"}).encode()
        elif self.path == "/latest/api/token":
            body = b"node-token"
        else:
            body = f"node says {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def node_imds() -> Iterator[str]:
    port = ports.free_port("127.0.0.51")
    server = http.server.ThreadingHTTPServer(("127.0.0.51", port), _NodeImds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.51:{port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(node_imds: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, dict[str, wire.RoleCredentials]]]:
    workdir: Path = tmp_path_factory.mktemp("imds-abuse")
    pki = certs.make_pki(workdir / "pki")
    proxy = ProxyProcess(workdir, pki, HOST, args=["--credential-wait", "0", "--upstream", node_imds, "--log-level", "warning"]).start()
    roles = {POD_A: role_credentials("ka", "RoleA"), POD_B: role_credentials("kb", "RoleB")}
    proxy.push_snapshot(wire.Snapshot(generation=1, roles=list(roles.values()),
                                      pods=[pod_entry(POD_A, "ka", name="a"), pod_entry(POD_B, "kb", name="b")]))
    try:
        yield proxy, roles
    finally:
        proxy.stop()


def raw(proxy: ProxyProcess, source: str, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> tuple[int, bytes]:
    """One request as bytes on a fresh connection from ``source``: (status, body); status 0 if the proxy closed it unanswered."""
    head = f"{method} {target} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    data = head.encode("latin-1", errors="replace") + b"\r\n" + body
    with socket.create_connection((proxy.host, proxy.metadata_port), timeout=10, source_address=(source, 0)) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-request (e.g. oversized): look at what came back
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    reply = b"".join(chunks)
    if not reply:
        return 0, b""
    status = int(reply.split(b" ", 2)[1])
    return status, reply.partition(b"\r\n\r\n")[2]


def check(source: str, status: int, body: bytes, roles: dict[str, wire.RoleCredentials]) -> None:
    """The invariants, whatever was asked."""
    assert status < 500, (status, body[:200])
    assert CANARY_KEY.encode() not in body and CANARY_SECRET.encode() not in body, "node credentials reached a pod"
    for ip, creds in roles.items():
        for secret in (creds.access_key_id, creds.secret_access_key.get_secret_value(), creds.session_token.get_secret_value()):
            if secret.encode() in body:
                assert ip == source, f"{ip}'s credentials served to {source}"


def token_for(proxy: ProxyProcess, source: str, ttl: int = 21600) -> str:
    status, body = raw(proxy, source, "PUT", "/latest/api/token", [("X-aws-ec2-metadata-token-ttl-seconds", str(ttl))])
    assert status == 200
    return body.decode()


# --- each abuse by name ----------------------------------------------------------------------------


def test_named_abuses(served: tuple[ProxyProcess, dict[str, wire.RoleCredentials]]) -> None:
    proxy, roles = served
    own = token_for(proxy, POD_A)
    others = token_for(proxy, POD_B)
    short = token_for(proxy, POD_A, ttl=1)
    time.sleep(1.5)
    cases: list[tuple[str, str, str, str, list[tuple[str, str]], bytes, set[int]]] = [
        ("bound pod, plain", POD_A, "GET", CREDS + "RoleA", [], b"", {200}),
        ("X-Forwarded-For", POD_A, "GET", CREDS + "RoleA", [("X-Forwarded-For", POD_A)], b"", {403}),
        ("X-Forwarded-For from a stranger naming a pod", STRANGER, "GET", CREDS + "RoleA", [("X-Forwarded-For", POD_A)], b"", {403}),
        ("another pod's role name", POD_A, "GET", CREDS + "RoleB", [], b"", {404}),
        ("stranger asks for a role", STRANGER, "GET", CREDS + "RoleA", [], b"", {404}),
        ("token of another IP", POD_A, "GET", CREDS + "RoleA", [("X-aws-ec2-metadata-token", others)], b"", {401}),
        ("token of a pod, from a stranger", STRANGER, "GET", CREDS + "RoleB", [("X-aws-ec2-metadata-token", others)], b"", {401}),
        ("forged token", POD_A, "GET", CREDS + "RoleA", [("X-aws-ec2-metadata-token", own[:-4] + "AAAA")], b"", {401}),
        ("forged expiry", POD_A, "GET", CREDS + "RoleA", [("X-aws-ec2-metadata-token", "9" + own[1:])], b"", {401}),
        ("expired token", POD_A, "GET", CREDS + "RoleA", [("X-aws-ec2-metadata-token", short)], b"", {401}),
        ("garbage token", POD_A, "GET", CREDS + "RoleA", [("X-aws-ec2-metadata-token", "x" * 4000)], b"", {401}),
        ("own token", POD_A, "GET", CREDS + "RoleA", [("X-aws-ec2-metadata-token", own)], b"", {200}),
        ("traversal to node creds", POD_A, "GET", "/latest/meta-data/placement/../iam/security-credentials/", [], b"", {200, 404}),
        ("encoded traversal", POD_A, "GET", "/latest/meta-data/placement/%2e%2e/iam/security-credentials/x", [], b"", {404}),
        ("double slash", POD_A, "GET", "/latest/meta-data//iam/security-credentials/", [], b"", {404}),
        # The proxy routes on the decoded path: the pod gets its own role's name, as by the plain path.
        ("encoded slash, own role", POD_A, "GET", "/latest/meta-data/iam%2fsecurity-credentials/", [], b"", {200, 404}),
        ("encoded slash, stranger", STRANGER, "GET", "/latest/meta-data/iam%2fsecurity-credentials/RoleA", [], b"", {404}),
        ("allowed route, dot segment", POD_A, "GET", "/latest/meta-data/placement/region/../../iam/info", [], b"", {200, 404}),
        ("allowed route, query", POD_A, "GET", "/latest/meta-data/placement/region?x=../../iam", [], b"", {404}),
        ("allowed route proxied", STRANGER, "GET", "/latest/meta-data/placement/region", [], b"", {200}),
        ("user-data", POD_A, "GET", "/latest/user-data", [], b"", {404}),
        ("identity document", POD_A, "GET", "/latest/dynamic/instance-identity/document", [], b"", {404}),
        ("absolute URI", POD_A, "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/", [], b"", {200, 400, 404}),
        ("oversized header", POD_A, "GET", CREDS + "RoleA", [("X-Big", "a" * 20000)], b"", {0, 400, 431}),
        ("many headers", POD_A, "GET", CREDS + "RoleA", [(f"X-H{i}", "v") for i in range(200)], b"", {0, 200, 400, 431}),
        ("oversized request line", POD_A, "GET", CREDS + "a" * 20000, [], b"", {0, 400, 414}),
        ("oversized body", POD_A, "PUT", "/latest/api/token", [("X-aws-ec2-metadata-token-ttl-seconds", "60")], b"x" * 200000, {0, 200, 400, 413}),
        ("token TTL too long", POD_A, "PUT", "/latest/api/token", [("X-aws-ec2-metadata-token-ttl-seconds", "21601")], b"", {400}),
        ("token TTL not a number", POD_A, "PUT", "/latest/api/token", [("X-aws-ec2-metadata-token-ttl-seconds", "1e3")], b"", {400}),
        ("token by GET", POD_A, "GET", "/latest/api/token", [], b"", {405}),
    ]
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO"):
        cases.append((f"method {method}", POD_A, method, CREDS + "RoleA", [], b"", {400, 405}))
    failures = []
    for name, source, method, target, headers, body, expected in cases:
        status, answer = raw(proxy, source, method, target, headers, body)
        check(source, status, answer, roles)
        if status not in expected:
            failures.append(f"{name}: HTTP {status} (expected {sorted(expected)}) {answer[:100]!r}")
    assert failures == []


# --- a few thousand generated requests -------------------------------------------------------------

_SEGMENTS = st.sampled_from([
    "latest", "meta-data", "iam", "security-credentials", "info", "RoleA", "RoleB", "..", ".", "%2e%2e", "%2E%2e", "%2f",
    "%252e%252e", "", "placement", "region", "availability-zone", "api", "token", "user-data", "dynamic",
    "instance-identity", "document", "latest%00", "..;", "\\..", "é", "a" * 300, "%", "%zz", "~", "*",
])
_PATHS = st.one_of(
    st.lists(_SEGMENTS, min_size=0, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from([CREDS, CREDS + "RoleA", CREDS + "RoleB", "/latest/meta-data/iam/info", "/latest/api/token",
                     "/latest/meta-data/placement/region", "//latest/meta-data/iam/security-credentials/"]).flatmap(
        lambda base: st.sampled_from(["", "/", "/..", "/../..", "?a=b", "#x", "%2f..", ";x", "/./", "//"]).map(lambda tail: base + tail)),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=60).map(lambda s: "/" + s),
)
_METHODS = st.sampled_from(["GET", "GET", "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "X"])
_SOURCES = st.sampled_from([POD_A, POD_B, STRANGER])


@st.composite
def _headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    if draw(st.booleans()):
        headers.append(("X-aws-ec2-metadata-token", draw(st.sampled_from(["@own", "@other", "@stranger", "forged.AAAA", "", "1.", "99999999999999.x"]))))
    if draw(st.integers(0, 5)) == 0:
        headers.append(("X-Forwarded-For", draw(st.sampled_from([POD_A, POD_B, STRANGER, "unknown"]))))
    if draw(st.booleans()):
        headers.append(("X-aws-ec2-metadata-token-ttl-seconds", draw(st.sampled_from(["1", "21600", "0", "-1", "21601", "abc", " 60", "9" * 20]))))
    if draw(st.integers(0, 10)) == 0:
        headers.append(("X-Padding", "p" * draw(st.sampled_from([100, 8000, 9000, 70000]))))
    return headers


def test_fuzzed_requests_never_break_the_invariants(served: tuple[ProxyProcess, dict[str, wire.RoleCredentials]]) -> None:
    proxy, roles = served
    tokens = {ip: token_for(proxy, ip) for ip in (POD_A, POD_B, STRANGER)}
    counts: dict[int, int] = {}
    started = time.monotonic()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(source=_SOURCES, method=_METHODS, path=_PATHS, headers=_headers(),
           body=st.sampled_from([b"", b"x", b"{}" * 10, b"y" * 5000]))
    def one(source: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        resolved = []
        for name, value in headers:
            if value == "@own":
                value = tokens[source]
            elif value == "@other":
                value = tokens[POD_B if source != POD_B else POD_A]
            elif value == "@stranger":
                value = tokens[STRANGER]
            resolved.append((name, value))
        status, answer = raw(proxy, source, method, path, resolved, body)
        counts[status] = counts.get(status, 0) + 1
        check(source, status, answer, roles)

    one()
    total = sum(counts.values())
    print(f"\n{total} fuzzed requests in {time.monotonic() - started:.1f}s; statuses {dict(sorted(counts.items()))}")
    assert total >= FUZZ_EXAMPLES * 0.9
    assert proxy.process.alive()
    # Still serving its pods afterwards.
    assert raw(proxy, POD_A, "GET", CREDS + "RoleA", [])[0] == 200
