"""A real Prometheus scrapes the real operator and proxies with the chart's rules: alerts fire on real faults, panels get data.

Debian's prometheus binary runs on loopback with a generated config (1 s
scrape and evaluation intervals) and the PrometheusRule helm renders, its
``for:`` and windows made short through values. The operator runs with
``--metrics-name-labels``. The STS front denies a role: PodiamSTSErrors
goes from inactive to firing and names the role; a proxy stops:
PodiamProxyDown and PodiamPushesFailing go from inactive to firing for
that node. Every query of the Grafana dashboard then returns series; the
values they returned are written to ``dashboard-queries.md`` in the test's
folder (the README's table comes from such a run).
"""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from metadata_proxy import wire
from localcluster import helm as _helm
from localcluster.controlplane import ControlPlane
from localcluster import moto, ports, processes
from tests.support import prometheus
from localcluster import stack as stacks

pytestmark = pytest.mark.integration

ACCOUNT = "123456789012"
DENIED = "prom-denied-role"
FAST = {"for": "2s"}
SERVED: dict[str, Any] = {}  # the pod with credentials: (node, ip), for more traffic before the dashboard's queries
RULE_VALUES = {"metrics": {"prometheusRule": {"evaluationInterval": "1s", "alerts": {
    "credentialsExpiring": FAST, "proxyDown": FAST, "proxyNotReady": FAST, "proxyNotPushed": FAST, "noActiveOperator": FAST,
    "tlsCertificateExpiring": FAST, "stsErrors": {**FAST, "window": "30s"}, "pushesFailing": {**FAST, "window": "20s"}}}}}


class Prometheus:
    def __init__(self, url: str, process: processes.ManagedProcess) -> None:
        self.url = url
        self.process = process

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def rule_states(self) -> dict[str, str]:
        groups = self.get("/api/v1/rules", type="alert")["groups"]
        return {rule["name"]: rule["state"] for group in groups for rule in group["rules"]}

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name and a["state"] == state]


@pytest.fixture(scope="module")
def monitored(controlplane: ControlPlane, sts: moto.StsFront, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stacks.Stack]:
    workdir = tmp_path_factory.mktemp("prometheus-stack")
    # Failed roles are retried within 2 s (the default backoff reaches 5 minutes), so errors keep coming.
    running = stacks.Stack(controlplane, sts, workdir, nodes=2,
                           operator_env={"PODIAM_METRICS_NAME_LABELS": "true", "PODIAM_FAILURE_RETRY_MAX": "2"})
    try:
        running.start()
        yield running
    except BaseException:
        running.print_operator_logs()
        raise
    finally:
        sts.clear_faults()
        running.stop()


@pytest.fixture(scope="module")
def prom(monitored: stacks.Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = prometheus.binary("prometheus")
    directory = tmp_path_factory.mktemp("prometheus")
    prometheus.write_rules(_helm.Helm(_helm.install_helm()), directory / "rules.yaml", RULE_VALUES)
    operator = urllib.parse.urlsplit(monitored.operator.metrics_url).netloc  # type: ignore[attr-defined]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(directory / "rules.yaml")],
        "scrape_configs": [
            {"job_name": prometheus.OPERATOR_JOB, "static_configs": [{"targets": [operator]}]},
            {"job_name": prometheus.PROXY_JOB,
             "static_configs": [{"targets": [f"{node.ip}:{monitored.health_port}" for node in monitored.nodes],
                                 "labels": {}}]},
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = ports.free_port()
    process = processes.ManagedProcess(
        "prometheus",
        [str(binary), f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        directory / "prometheus.log",
    ).start()
    server = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        process.wait_http(f"{server.url}/-/ready", timeout=60)
        yield server
    except BaseException:
        print(f"--- prometheus log ---\n{process.log()[-4000:]}")
        raise
    finally:
        process.stop()


def wait_state(prom: Prometheus, alert: str, state: str, timeout: float, before: str) -> list[str]:
    """Poll the rule's state until it is ``state``; the states seen on the way, in order, from ``before`` the fault."""
    seen: list[str] = [before]

    def reached() -> bool:
        current = prom.rule_states()[alert]
        if not seen or seen[-1] != current:
            seen.append(current)
        return current == state

    started = time.monotonic()
    stacks.wait_for(reached, timeout, f"{alert} {state} (seen: {seen})", interval=0.5)
    print(f"{alert}: {' -> '.join(seen)} {time.monotonic() - started:.1f} s after the fault")
    return seen


def test_targets_are_scraped_and_every_alert_is_inactive(monitored: stacks.Stack, prom: Prometheus) -> None:
    def all_up() -> bool:
        up = prom.query("up")
        return len(up) == 3 and all(sample["value"][1] == "1" for sample in up)

    stacks.wait_for(all_up, 30, "the operator and both proxies scraped")
    stacks.wait_for(lambda: len(prom.rule_states()) == 8, 30, "the chart's eight alerts loaded")
    time.sleep(3)  # a few evaluations with data: nothing may be pending or firing on a healthy stack
    assert set(prom.rule_states().values()) == {"inactive"}, prom.rule_states()
    assert prom.query("podiam_operator_active")[0]["value"][1] == "1"


def test_a_denied_role_fires_the_sts_alert_naming_it(monitored: stacks.Stack, prom: Prometheus) -> None:
    ns = "prom-sts"
    monitored.create_namespace(ns, ".*")
    node = monitored.nodes[0]
    # A role that works, for the dashboard's credential panels, and traffic: hits and a miss.
    ip = monitored.next_ip()
    monitored.create_pod(ns, "served", role="prom-served-role", node=node, ip=ip)
    monitored.wait_credentials(node, ip)
    SERVED["pod"] = (node, ip)
    assert monitored.imds(node, monitored.next_ip()).status == 404
    before = prom.rule_states()["PodiamSTSErrors"]

    monitored.sts.set_faults(deny_roles=rf".*:role/{DENIED}")
    monitored.create_pod(ns, "denied", role=DENIED, node=node, ip=monitored.next_ip())
    seen = wait_state(prom, "PodiamSTSErrors", "firing", 90, before)
    assert seen[0] == "inactive" and seen[-1] == "firing", seen
    (alert,) = prom.alerts("PodiamSTSErrors")
    assert alert["labels"]["role"] == f"arn:aws:iam::{ACCOUNT}:role/{DENIED}"
    assert (alert["labels"]["action"], alert["labels"]["code"]) == ("AssumeRole", "AccessDenied")
    assert alert["annotations"]["runbook_url"].endswith("README.md#podiamstserrors")
    assert alert["annotations"]["summary"] == f"STS AssumeRole fails with AccessDenied for arn:aws:iam::{ACCOUNT}:role/{DENIED}"


def test_a_stopped_proxy_fires_proxy_down_and_pushes_failing(monitored: stacks.Stack, prom: Prometheus) -> None:
    node = monitored.nodes[1]
    instance = f"{node.ip}:{monitored.health_port}"
    # A push the other proxy refuses (a malformed body): what the dashboard's failure panel shows of the proxies' side.
    assert monitored.nodes[0].proxy.control("POST", wire.CHANGES_PATH, b"{").status == 422
    states = prom.rule_states()
    node.proxy.stop()
    try:
        seen = wait_state(prom, "PodiamProxyDown", "firing", 60, states["PodiamProxyDown"])
        assert seen[0] == "inactive" and seen[-1] == "firing", seen
        (down,) = prom.alerts("PodiamProxyDown")
        assert down["labels"]["instance"] == instance
        # The operator still sees the proxy pod Running and keeps pushing: they fail, named by node.
        seen = wait_state(prom, "PodiamPushesFailing", "firing", 60, states["PodiamPushesFailing"])
        assert seen[0] == "inactive" and seen[-1] == "firing", seen
        (failing,) = prom.alerts("PodiamPushesFailing")
        assert failing["labels"]["node"] == node.name
        assert prom.rule_states()["PodiamNoActiveOperator"] == "inactive"
    finally:
        node.proxy.start()


def test_every_dashboard_query_returns_series(monitored: stacks.Stack, prom: Prometheus, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("podiam_dashboard", _helm.REPO / "scripts" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    dashboard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dashboard)
    # Counters count from their first sample: traffic now, after they exist, makes rates of it (hits and misses).
    node, ip = SERVED["pod"]
    for _ in range(5):
        assert monitored.imds(node, ip).status == 200
    assert monitored.imds(node, monitored.next_ip()).status == 404
    time.sleep(3)  # scraped
    rows = ["| panel | query | series: value |", "| --- | --- | --- |"]
    empty = []
    for title, expr in dashboard.queries():
        # Grafana's $__rate_interval is at least four scrape intervals; one minute covers this run's samples.
        result = prom.query(expr.replace("$__rate_interval", "1m"))
        if not result:
            empty.append((title, expr))
        shown = "; ".join(
            f"{','.join(f'{k}={v}' for k, v in sorted(s['metric'].items())) or '{}'}: {float(s['value'][1]):.4g}" for s in result[:6])
        cell = expr.replace("|", "\\|")  # a Markdown table's cell
        rows.append(f"| {title} | `{cell}` | {shown.replace('|', '/')}{' …' if len(result) > 6 else ''} |")
    table = "\n".join(rows) + "\n"
    (tmp_path / "dashboard-queries.md").write_text(table)
    print(table)
    assert not empty, empty
