"""The Grafana dashboard and Prometheus alert rules refer only to metrics that exist, and node heartbeats are exported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from prometheus_client import Counter, Gauge, Histogram

from mta import metrics
from tests.mtaprocess import REPOSITORY
from tests.mx import wait_until
from tests.test_operations import http_get

DASHBOARD = REPOSITORY / "config" / "grafana" / "mta.json"
RULES = REPOSITORY / "config" / "prometheus" / "mta-alerts.yml"
# Series names every Prometheus target has, besides the MTA's own.
TARGET_SERIES = {"up"}
SUFFIXES = {Counter: ("_total",), Gauge: ("",), Histogram: ("_bucket", "_sum", "_count")}
PROMQL_WORDS = {"sum", "max", "min", "by", "rate", "increase", "histogram_quantile", "time", "and", "or", "le"}
EXPECTED_ALERTS = {"MtaDown", "MtaQueueBacklogHigh", "MtaDeferralRateHigh", "MtaBounceRateHigh",
                   "MtaOutboundTlsFailures", "MtaCertificateExpiringSoon", "MtaNodeHeartbeatLost",
                   "MtaBodyStoreErrors", "MtaAuditLagging", "MtaDkimRecordMissing"}


def exported_series() -> set[str]:
    """Return the series names mta/metrics.py exposes, such as mta_deliveries_total."""
    names = set()
    for value in vars(metrics).values():
        for kind, suffixes in SUFFIXES.items():
            if isinstance(value, kind):
                names.update(value._name + suffix for suffix in suffixes)
    return names


def series_in(expr: str) -> set[str]:
    """Return the series names in a PromQL expression: not functions, keywords, labels or ranges."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", without_strings)
    without_grouping = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_labels)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_grouping))
    return names - PROMQL_WORDS - {"__rate_interval", "job"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed, so the rules file cannot be parsed")
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_series_parser_finds_names():
    expr = 'sum by (state) (rate(mta_deliveries_total{job=~"$job",outcome="sent"}[5m])) / up'

    assert series_in(expr) == {"mta_deliveries_total", "up"}


def test_dashboard_uses_existing_metrics():
    known = exported_series() | TARGET_SERIES
    exprs = dashboard_exprs()

    assert len(exprs) >= 10
    for expr in exprs:
        assert series_in(expr), expr
        assert series_in(expr) <= known, f"unknown metric in {expr!r}: {series_in(expr) - known}"


def test_dashboard_covers_operations():
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(series_in(expr) for expr in dashboard_exprs()))

    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for name in ("mta_queue_depth", "mta_deliveries_total", "mta_remote_replies_total",
                 "mta_tls_certificate_expiry_timestamp_seconds", "mta_messages_accepted_total", "mta_nodes",
                 "mta_store_errors_total", "mta_outbound_tls_failures_total", "up"):
        assert name in used, name


def test_alert_rules_structure():
    rules = alert_rules()

    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_alert_rules_use_existing_metrics():
    known = exported_series() | TARGET_SERIES

    for rule in alert_rules():
        used = series_in(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']}: unknown metric {used - known}"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not on PATH (Debian package prometheus)")
    return path


def test_alert_rules_pass_promtool():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_exprs_pass_promtool(tmp_path):
    # promtool checks PromQL only inside rules, so each expression becomes a recording rule.
    command = promtool()
    rules = [{"record": f"mta:dashboard_{index}",
              "expr": expr.replace("$__rate_interval", "5m").replace('=~"$job"', '=~"mta"')}
             for index, expr in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-rules.json"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = subprocess.run([command, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_export_node_heartbeats(make_mta):
    mta = make_mta()

    def scraped() -> str:
        text = http_get(mta.http_port, "/metrics")[1]
        return text if 'mta_nodes{state="alive"} 1.0' in text else ""

    text = wait_until(scraped)
    assert 'mta_nodes{state="alive"} 1.0' in text
    assert 'mta_nodes{state="lost"} 0.0' in text
    assert "mta_audit_lag_seconds 0.0" in text
    assert "_created" not in text
