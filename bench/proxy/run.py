"""Benchmark: credentials GET throughput and latency, the proxy against nginx and AWS's Go IMDS mock.

Starts a real proxy (``python -m metadata_proxy``) holding ``--pods`` pods
(one of them 127.0.0.1, where wrk's connections come from); nginx serving
the same credentials JSON as a static file; and AWS's own IMDS mock
(``github.com/aws/amazon-ec2-metadata-mock``, built once from the Go module
proxy into ~/.cache/podiam/tools by scripts/install-go-tool.sh) serving the
same credentials on its credentials path. Each must answer that path 200
with a credentials JSON first. Then ``wrk`` runs against each in turn, in
one run, for ``--duration`` seconds with ``--connections`` connections;
printed: req/s, p50, p99 and non-2xx answers of each (any non-2xx is said
loudly), the ratios proxy/nginx and proxy/mock, the proxy's CPU time per
request, its RSS (empty, holding the pods, after the run, and once it has
checked an RS256 container-credentials token, which it does with the
standard library: whether cryptography's native library got loaded is read
from /proc and printed) and the load average before and after. Not a test:
nothing is asserted.

    .venv/bin/python -m bench.proxy.run [--duration 10] [--connections 100] [--pods 250]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import procfs
from metadata_proxy import wire
from localcluster import certs, ports, processes, proxy

REPO = Path(__file__).resolve().parents[2]
MOCK = "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@v1.13.0"
HOST = "127.0.0.1"  # wrk connects from here, so the proxy sees this pod's IP
ROLE_PATH = "/latest/meta-data/iam/security-credentials/"

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, duration: int, connections: int, threads: int) -> dict[str, float]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "socket_errors": errors.group(1) if errors else "none"}  # type: ignore[dict-item]




def snapshot(pods: int) -> wire.Snapshot:
    # One role per pod: the per-pod-session worst case for memory.
    roles = [proxy.role_credentials(f"role-{i}", f"bench-role-{i}", expires_in=7200) for i in range(pods)]
    ips = [HOST] + [f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1, pods)]
    entries = [proxy.pod_entry(ip, f"role-{i}", name=f"bench-{i}") for i, ip in enumerate(ips)]
    return wire.Snapshot(generation=1, roles=roles, pods=entries)


def mock_binary() -> str:
    """AWS's IMDS mock, built on first use (a minute or two), then cached by version."""
    name = "ec2-metadata-mock-" + MOCK.rsplit("@", 1)[1]
    result = subprocess.run(["bash", str(REPO / "scripts" / "install-go-tool.sh"), MOCK, name], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"building {MOCK} failed:\n{result.stderr}")
    return result.stdout.strip()


def mock_config(role: str, document: dict[str, str]) -> dict[str, object]:
    """The mock's config file: our role's name and credentials at the same path."""
    return {"metadata": {"paths": {"iam-security-credentials": ROLE_PATH + role},
                         "values": {"iam-security-credentials-role": role, "iam-security-credentials": document}}}


def credentials_json(url: str) -> str | None:
    """What is wrong with ``url``'s answer (None: a 200 with the credentials document SDKs parse)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            status, body = answer.status, answer.read()
    except OSError as error:
        return f"no answer: {error}"
    if status != 200:
        return f"HTTP {status}"
    try:
        document = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"
    missing = {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"} - set(document)
    return f"no {', '.join(sorted(missing))} in the JSON" if missing else None


def check_a_token(server: proxy.ProxyProcess) -> int:
    """Push the API server's keys (an RSA JWK) and send an RS256 token whose signature does not verify: the proxy
    parses the key and checks the signature with the standard library (only an EC key would load cryptography).
    The HTTP status."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "bench", "alg": "RS256", "use": "sig"}
    ack = server.push_changes(wire.Changes(service_account_keys=wire.ServiceAccountKeys(issuer="https://bench", keys=[jwk])))
    assert not ack.rejected, ack
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"iss": "https://bench", "sub": "x"}, other, algorithm="RS256", headers={"kid": "bench"})
    return server.container_credentials(token).status



def nginx_conf(root: Path, port: int, workers: str) -> str:
    return f"""
worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    server {{
        listen {HOST}:{port};
        root {root}/www;
    }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--nginx-workers", default="auto")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} missing: run `make system-deps` (Debian packages wrk, nginx-light)")
    if not shutil.which("go"):
        sys.exit("go missing: the Go IMDS mock is built with it from the Go module proxy")
    mock_path = mock_binary()

    load_before = procfs.loadavg()
    work = Path(tempfile.mkdtemp(prefix="podiam-bench-"))
    work.chmod(0o755)  # nginx workers run as nobody and read the JSON from here
    nginx = mock = None
    server = proxy.ProxyProcess(work, certs.make_pki(work / "pki"), HOST, args=["--log-level", "warning"], name="bench-proxy")
    try:
        server.start()
        rss_empty = procfs.rss_mib(server.process.pid)
        ack = server.push_snapshot(snapshot(args.pods))
        assert not ack.rejected, ack
        role = server.imds_get(ROLE_PATH, HOST).text
        document = server.imds_get(ROLE_PATH + role, HOST)
        assert document.status == 200, document
        rss_loaded = procfs.rss_mib(server.process.pid)

        (work / "www" / ROLE_PATH.strip("/")).mkdir(parents=True)
        (work / "www" / ROLE_PATH.strip("/") / role).write_bytes(document.body)
        nginx_port = ports.free_port(HOST)
        (work / "nginx.conf").write_text(nginx_conf(work, nginx_port, args.nginx_workers))
        nginx = processes.ManagedProcess("nginx", ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], work / "nginx.log")
        nginx.start()
        nginx.wait_http(f"http://{HOST}:{nginx_port}{ROLE_PATH}{role}")

        mock_port = ports.free_port(HOST)
        (work / "mock.json").write_text(json.dumps(mock_config(role, json.loads(document.body))))
        mock = processes.ManagedProcess("imds-mock", [mock_path, "--hostname", HOST, "--port", str(mock_port), "--config-file",
                                                      str(work / "mock.json")], work / "mock.log")
        mock.start()
        mock.wait_http(f"http://{HOST}:{mock_port}{ROLE_PATH}{role}")

        urls = {"proxy": f"{server.metadata_url}{ROLE_PATH}{role}", "nginx": f"http://{HOST}:{nginx_port}{ROLE_PATH}{role}",
                "go-mock": f"http://{HOST}:{mock_port}{ROLE_PATH}{role}"}
        for name, url in urls.items():
            wrong = credentials_json(url)
            if wrong:
                sys.exit(f"!!! {name} does not serve the credentials at {url}: {wrong}")

        results = {}
        for name, url in urls.items():
            cpu_before = procfs.cpu_seconds(server.process.pid)
            results[name] = wrk(url, args.duration, args.connections, args.threads)
            if name == "proxy":
                cpu = procfs.cpu_seconds(server.process.pid) - cpu_before
                results[name]["cpu_us_per_request"] = cpu / (results[name]["rps"] * args.duration) * 1e6
            time.sleep(1)
        rss_after = procfs.rss_mib(server.process.pid)
        token_status = check_a_token(server)
        rss_token = procfs.rss_mib(server.process.pid)
        cryptography_loaded = procfs.maps_a_file_under(server.process.pid, "cryptography")
    finally:
        for process in (mock, nginx):
            if process:
                process.stop()
        server.stop()
    load_after = procfs.loadavg()

    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d} {cores} cores; wrk -t{args.threads} "
          f"-c{args.connections} -d{args.duration}s on the credentials path; {args.pods} pods, nginx workers "
          f"{args.nginx_workers}, {MOCK.rsplit('/', 1)[1]}")
    print(f"{'server':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  socket errors")
    for name, r in results.items():
        print(f"{name:8} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['non2xx']:>8.0f}  {r['socket_errors']}")
    for name, r in results.items():
        if r["non2xx"] or r["socket_errors"] != "none":
            print(f"!!! {name}: {r['non2xx']:.0f} non-2xx answers, socket errors: {r['socket_errors']}: its req/s are not all "
                  "credentials")
    proxy_rps = results["proxy"]["rps"]
    print(f"proxy/nginx throughput: {proxy_rps / results['nginx']['rps']:.2f}; "
          f"proxy/go-mock throughput: {proxy_rps / results['go-mock']['rps']:.2f}")
    print(f"proxy CPU per request: {results['proxy']['cpu_us_per_request']:.1f} us (one core: at most "
          f"{1e6 / results['proxy']['cpu_us_per_request']:.0f} req/s)")
    print(f"proxy RSS: {rss_empty:.1f} MiB empty, {rss_loaded:.1f} MiB with {args.pods} pods, {rss_after:.1f} MiB after the run; "
          f"{rss_token:.1f} MiB once an RS256 container-credentials token was checked (HTTP {token_status}; cryptography "
          f"{'loaded' if cryptography_loaded else 'not loaded'}, PyJWT not used by the proxy)")
    print(f"load average (1, 5, 15 min): {load_before} before the run, {load_after} after")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
