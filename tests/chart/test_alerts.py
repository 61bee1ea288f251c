"""The chart's alerts, rendered by helm as they ship, under ``promtool test rules``: each fires when it should and not otherwise.

Every alert has a firing case and a case that looks close but must stay
quiet; the annotations promtool expands (summary, description with the
humanized value, runbook_url) are compared in full.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from localcluster import helm as _helm
from tests.support import prometheus

pytestmark = pytest.mark.chart

OP = f'job="{prometheus.OPERATOR_JOB}", instance="10.0.0.5:8185"'
PX_A = f'job="{prometheus.PROXY_JOB}", instance="10.0.1.1:8183"'
PX_B = f'job="{prometheus.PROXY_JOB}", instance="10.0.1.2:8183"'
ALERTS = ["PodiamCredentialsExpiring", "PodiamSTSErrors", "PodiamProxyDown", "PodiamProxyNotReady", "PodiamProxyNotPushed",
          "PodiamNoActiveOperator", "PodiamTLSCertificateExpiring", "PodiamPushesFailing"]


def expand(template: str, labels: Mapping[str, str], value: str) -> str:
    """What Prometheus makes of the few template constructs the chart's annotations use."""
    def condition(match: re.Match[str]) -> str:
        return match.group(2) if labels.get(match.group(1)) else (match.group(3) or "")
    text = re.sub(r"\{\{ if \$labels\.(\w+) \}\}(.*?)(?:\{\{ else \}\}(.*?))?\{\{ end \}\}", condition, template)
    text = re.sub(r"\{\{ \$value \| \w+ \}\}", value, text)
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)


def labels_of(series: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


class Cases:
    def __init__(self, rules: Mapping[str, Any]) -> None:
        self.rules = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
        self.tests: list[dict[str, Any]] = []
        self.covered: dict[str, set[bool]] = {name: set() for name in self.rules}

    def add(self, series: Mapping[str, str], checks: list[tuple[str, str, list[tuple[str, str]]]], interval: str = "1m") -> None:
        """checks: (eval_time, alert, [(series the alert is about, its humanized value)]); an empty list: must not fire."""
        tests = []
        for eval_time, alert, firing in checks:
            rule = self.rules[alert]
            expected = []
            for about, value in firing:
                labels = {**labels_of(about), **rule["labels"]}
                expected.append({
                    "exp_labels": labels,
                    "exp_annotations": {key: expand(text, labels, value) for key, text in rule["annotations"].items()},
                })
            self.covered[alert].add(bool(firing))
            tests.append({"eval_time": eval_time, "alertname": alert, "exp_alerts": expected})
        self.tests.append({"interval": interval, "input_series": [{"series": s, "values": v} for s, v in series.items()],
                           "alert_rule_test": tests})


def build(rules: Mapping[str, Any]) -> Cases:
    c = Cases(rules)
    # Credentials held on node A expire 900 s after t=0 (no renewal arrives): under 600 s from 5m01s, for 1m.
    # Node B's were renewed in time; a proxy holding none exports +Inf.
    c.add({f"podiam_proxy_credentials_expiry_timestamp_seconds{{{PX_A}}}": "900x10",
           f"podiam_proxy_credentials_expiry_timestamp_seconds{{{PX_B}}}": "900x3 4500x10",
           f'podiam_proxy_credentials_expiry_timestamp_seconds{{job="{prometheus.PROXY_JOB}", instance="10.0.1.3:8183"}}': " ".join(["+Inf"] * 11)},
          [("6m", "PodiamCredentialsExpiring", []),
           ("7m", "PodiamCredentialsExpiring", [(f"{{{PX_A}}}", "8m 0s")])])
    # A role denied from t=2m, retried every minute; another code failed once, long ago; GetCallerIdentity names no role.
    # Summed over the operator's replicas (only the active one calls STS): no instance label.
    role = 'action="AssumeRole", code="AccessDenied", role="arn:aws:iam::123456789012:role/app"'
    c.add({f"podiam_sts_errors_total{{{OP}, {role}}}": "_ _ 1+1x10 11x20",
           f'podiam_sts_errors_total{{{OP}, action="AssumeRole", code="Throttling"}}': "3x30"},
          [("7m", "PodiamSTSErrors", []),  # true from 3m (the first error is one sample: no increase yet), for 5m
           ("8m", "PodiamSTSErrors", [(f'{{job="{prometheus.OPERATOR_JOB}", {role}}}', "7")]),  # 6, extrapolated
           ("25m", "PodiamSTSErrors", [])])  # no error since 12m; the throttled one failed before the window
    caller = 'action="GetCallerIdentity", code="ExpiredToken"'
    c.add({f"podiam_sts_errors_total{{{OP}, {caller}}}": "0+2x20"},
          [("6m", "PodiamSTSErrors", [(f'{{job="{prometheus.OPERATOR_JOB}", {caller}}}', "12")])])
    # Proxy A stops answering at t=2m; B keeps answering.
    c.add({f"up{{{PX_A}}}": "1 1 0x10", f"up{{{PX_B}}}": "1x12"},
          [("6m", "PodiamProxyDown", []), ("7m", "PodiamProxyDown", [(f"{{{PX_A}}}", "0")])])
    # Proxy A never gets its snapshot; B gets it at t=3m.
    c.add({f"podiam_proxy_ready{{{PX_A}}}": "0x10", f"podiam_proxy_ready{{{PX_B}}}": "0 0 0 1x10"},
          [("4m", "PodiamProxyNotReady", []), ("5m", "PodiamProxyNotReady", [(f"{{{PX_A}}}", "0")]),
           ("10m", "PodiamProxyNotReady", [(f"{{{PX_A}}}", "0")])])
    # The operator reaches proxy A until t=6m, then nothing; B every minute; C never (not ready: the alert above says so).
    contact = "podiam_proxy_operator_contact_timestamp_seconds"
    c.add({f"{contact}{{{PX_A}}}": "60+60x5 360x20", f"{contact}{{{PX_B}}}": "60+60x25",
           f'{contact}{{job="{prometheus.PROXY_JOB}", instance="10.0.1.3:8183"}}': "0x25"},
          [("13m", "PodiamProxyNotPushed", []), ("14m", "PodiamProxyNotPushed", [(f"{{{PX_A}}}", "8m 0s")])])
    # The active replica stops at t=5m and the standby does not take over; then no operator is scraped at all.
    other = f'job="{prometheus.OPERATOR_JOB}", instance="10.0.0.6:8185"'
    c.add({f"podiam_operator_active{{{OP}}}": "1x5 0x10", f"podiam_operator_active{{{other}}}": "0x15"},
          [("5m", "PodiamNoActiveOperator", []), ("10m", "PodiamNoActiveOperator", []),
           ("11m", "PodiamNoActiveOperator", [("{}", "0")])])
    c.add({f"podiam_operator_active{{{other}}}": "_x20"},  # none scraped: vector(0)
          [("4m", "PodiamNoActiveOperator", []), ("6m", "PodiamNoActiveOperator", [("{}", "0")])])
    c.add({f"podiam_operator_active{{{OP}}}": "0 1x10", f"podiam_operator_active{{{other}}}": "0x10"},
          [("10m", "PodiamNoActiveOperator", [])])
    # TLS: the operator's client certificate has 13 days left at t=0 (not renewed); the CA and the proxy's have years.
    day = 86400
    cert = f'{OP}, file="cert"'
    c.add({f"podiam_tls_certificate_expiry_timestamp_seconds{{{cert}}}": f"{13 * day}x70",
           f'podiam_tls_certificate_expiry_timestamp_seconds{{{OP}, file="ca"}}': f"{3000 * day}x70",
           f'podiam_proxy_tls_certificate_expiry_timestamp_seconds{{{PX_A}, file="cert"}}': f"{15 * day}x70"},
          [("59m", "PodiamTLSCertificateExpiring", []),
           ("60m", "PodiamTLSCertificateExpiring", [(f"{{{cert}}}", "12d 23h 0m 0s")])])
    c.add({f'podiam_proxy_tls_certificate_expiry_timestamp_seconds{{{PX_B}, file="ca"}}': f"{day}x70"},
          [("60m", "PodiamTLSCertificateExpiring", [(f'{{{PX_B}, file="ca"}}', "23h 0m 0s")])])
    # Half the pushes to node-a fail (with metrics.nameLabels the node is named); node-b's all succeed.
    push = "podiam_node_push_seconds_count"
    c.add({f'{push}{{{OP}, node="node-a", result="ok"}}': "0+10x30",
           f'{push}{{{OP}, node="node-a", result="ClientConnectorError"}}': "0+10x30",
           f'{push}{{{OP}, node="node-b", result="ok"}}': "0+10x30",
           f'{push}{{{OP}, node="node-b", result="ServerTimeoutError"}}': "0x30"},
          [("10m", "PodiamPushesFailing", []), ("12m", "PodiamPushesFailing", [(f'{{{OP}, node="node-a"}}', "50%")])])
    # Without name labels the node is empty: one share per operator; a few failures in many pushes stay under 10%.
    c.add({f'{push}{{{OP}, result="ok"}}': "0+100x30", f'{push}{{{OP}, result="ClientConnectorError"}}': "0+5x30"},
          [("20m", "PodiamPushesFailing", [])])
    c.add({f'{push}{{{OP}, result="ok"}}': "0x30", f'{push}{{{OP}, result="ClientConnectorError"}}': "0+5x30"},
          [("20m", "PodiamPushesFailing", [(f"{{{OP}}}", "100%")])])
    return c


def run_promtool(promtool: Path, rules: Mapping[str, Any], cases: Cases, directory: Path) -> subprocess.CompletedProcess[str]:
    (directory / "rules.yaml").write_text(yaml.safe_dump(dict(rules), sort_keys=False))
    (directory / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": cases.tests}, sort_keys=False))
    return subprocess.run([str(promtool), "test", "rules", "tests.yaml"], cwd=directory, capture_output=True, text=True,
                          timeout=120, check=False)


def test_every_alert_fires_when_it_should_and_only_then(helm: _helm.Helm, tmp_path: Path) -> None:
    promtool = prometheus.binary("promtool")
    rules = prometheus.rule_groups(helm)
    cases = build(rules)
    assert sorted(cases.rules) == sorted(ALERTS)
    assert {name: sorted(seen) for name, seen in cases.covered.items()} == {name: [False, True] for name in ALERTS}
    check = subprocess.run([str(promtool), "check", "rules", "/dev/stdin"], input=yaml.safe_dump(dict(rules)),
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    result = run_promtool(promtool, rules, cases, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_expectation_fails(helm: _helm.Helm, tmp_path: Path) -> None:
    """The harness can fail: an alert expected where none fires is reported by promtool."""
    promtool = prometheus.binary("promtool")
    rules = prometheus.rule_groups(helm)
    cases = Cases(rules)
    cases.add({f"up{{{PX_B}}}": "1x12"}, [("7m", "PodiamProxyDown", [(f"{{{PX_B}}}", "0")])])
    result = run_promtool(promtool, rules, cases, tmp_path)
    assert result.returncode != 0 and "PodiamProxyDown" in result.stdout + result.stderr


def test_the_values_shape_the_rules(helm: _helm.Helm) -> None:
    rules = prometheus.rule_groups(helm, {"metrics": {"prometheusRule": {
        "alertLabels": {"team": "platform"}, "evaluationInterval": "15s", "runbookUrl": "https://wiki.example/podiam",
        "jobs": {"operator": "kube-system/podiam-op", "proxy": "px"},
        "alerts": {"proxyDown": {"enabled": False}, "stsErrors": {"for": "1s", "window": "2m", "threshold": 3, "severity": "page"},
                   "tlsCertificateExpiring": {"days": 30}}}}})
    (group,) = rules["groups"]
    assert group["interval"] == "15s"
    by_name = {r["alert"]: r for r in group["rules"]}
    assert "PodiamProxyDown" not in by_name and len(by_name) == len(ALERTS) - 1
    sts = by_name["PodiamSTSErrors"]
    assert sts["for"] == "1s" and sts["labels"] == {"severity": "page", "team": "platform"}
    assert sts["expr"] == 'sum by (job, action, code, role) (increase(podiam_sts_errors_total{job="kube-system/podiam-op"}[2m])) > 3'
    assert sts["annotations"]["runbook_url"] == "https://wiki.example/podiam#podiamstserrors"
    assert 'podiam_proxy_ready{job="px"}' in by_name["PodiamProxyNotReady"]["expr"]
    assert str(30 * 86400) in by_name["PodiamTLSCertificateExpiring"]["expr"]


def test_off_by_default_and_every_runbook_link_has_its_readme_entry(helm: _helm.Helm) -> None:
    assert "PrometheusRule" not in helm.template().kinds()
    readme = (_helm.REPO / "README.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in readme.splitlines() if line.startswith("#")}
    for rule in prometheus.rule_groups(helm)["groups"][0]["rules"]:
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[1] in anchors, f"{rule['alert']}: no README heading for {url}"
