"""The Grafana dashboard and the alert rules use only metrics pushgw exports, and the rules pass promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import start_http_server
from prometheus_client.metrics import MetricWrapperBase

from pushgw import metrics
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import until

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RULES = OBSERVABILITY / "pushgw-alerts.yaml"
RULES_TEST = OBSERVABILITY / "pushgw-alerts.test.yaml"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
REQUIRED_ALERTS = {
    "PushgwCredentialBroken", "PushgwApnsCertificateExpiringSoon", "PushgwQueueLagHigh",
    "PushgwDeadLetters", "PushgwPushStalled", "PushgwPushPastExpiry",
}  # fmt: skip


def exported_series() -> set[str]:
    """Every series name pushgw/metrics.py's collectors can produce (`foo_total`, `foo_bucket`, …)."""
    names = set()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def referenced_metrics(expression: str) -> set[str]:
    return set(re.findall(r"\bpushgw_[a-z0-9_]+\b", expression))


def unknown_metrics(expressions: list[str]) -> set[str]:
    return set().union(*(referenced_metrics(expression) for expression in expressions)) - exported_series()


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    assert executable, "promtool is missing: run scripts/ensure-promtool.sh (Debian package prometheus)"
    return subprocess.run(
        [executable, *args], check=False, capture_output=True, text=True, timeout=120, cwd=OBSERVABILITY
    )


def test_exported_series_include_the_watchdog_gauges_and_suffixes() -> None:
    names = exported_series()
    assert {"pushgw_intake_requests_total", "pushgw_queue_lag_seconds_bucket", "pushgw_ppns_connections",
            "pushgw_dead_letters_pending", "pushgw_running_push_idle_seconds"} <= names  # fmt: skip
    assert unknown_metrics(["rate(pushgw_intake_request_total[5m])"]) == {"pushgw_intake_request_total"}


def test_dashboard_queries_only_exported_metrics() -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 30
    assert unknown_metrics(expressions) == set()


def test_dashboard_covers_every_exported_metric() -> None:
    used = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for name in referenced_metrics(" ".join(dashboard_expressions()))
    }
    exported = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported_series()}
    assert exported - used == set()


def test_dashboard_panels_are_placed_and_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert [variable["name"] for variable in dashboard["templating"]["list"]] == ["datasource"]
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"][
            "w"
        ] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def test_alert_rules_use_only_exported_metrics_and_cover_the_issue() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    assert unknown_metrics([rule["expr"] for rule in rules]) == set()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{rule['alert'].lower()}"


def test_runbook_anchors_exist_in_the_operations_guide() -> None:
    guide = (OBSERVABILITY.parents[1] / "docs" / "operations.md").read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in guide.splitlines() if line.startswith("#")}  # fmt: skip
    for rule in alert_rules():
        assert rule["alert"].lower() in headings, rule["alert"]


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_alert_fires_in_promtool_unit_tests() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {rule["alert"] for rule in alert_rules()}
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("threshold", ["> 300", "< 14"])
def test_promtool_unit_tests_fail_when_a_threshold_moves(tmp_path: Path, threshold: str) -> None:
    rules = RULES.read_text()
    assert threshold in rules
    (tmp_path / RULES.name).write_text(
        rules.replace(threshold, threshold[0] + " 100000" if threshold[0] == ">" else "< 0")
    )
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text())
    executable = shutil.which("promtool")
    assert executable
    result = subprocess.run(
        [executable, "test", "rules", RULES_TEST.name],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0


def test_a_real_prometheus_scrapes_pushgw_metrics_and_evaluates_the_rules(tmp_path: Path) -> None:
    """Debian's Prometheus scrapes pushgw's exposition (the same registry every process serves), loads the
    rules and puts PushgwDeadLetters into `pending` for a gauge the watchdog would set."""
    executable = shutil.which("prometheus")
    assert executable, "prometheus is missing: run scripts/ensure-promtool.sh (Debian package prometheus)"
    metrics.DEAD_LETTERS_PENDING.labels("prometheus-test").set(3)
    exposition, _ = start_http_server(free_port(), "127.0.0.1")
    web = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "pushgw", "static_configs": [{"targets": [f"127.0.0.1:{exposition.server_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = subprocess.Popen(
        [executable, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def api(path: str) -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/{path}", timeout=2) as response:
                    return json.load(response)["data"]
            except OSError:
                return None

        groups = until(lambda: (api("rules") or {}).get("groups"), timeout_s=30, what="the rules to load")
        assert {rule["name"] for group in groups for rule in group["rules"]} == {
            r["alert"] for r in alert_rules()
        }
        query = 'pushgw_dead_letters_pending{app_id="prometheus-test"}'
        [sample] = until(
            lambda: (api(f"query?query={urllib.parse.quote(query)}") or {}).get("result"), timeout_s=30
        )
        assert sample["value"][1] == "3"
        until(
            lambda: any(
                alert["labels"]["alertname"] == "PushgwDeadLetters"
                and alert["labels"]["app_id"] == "prometheus-test"
                for alert in (api("alerts") or {}).get("alerts", [])
            ),
            timeout_s=30,
            what="PushgwDeadLetters to become pending",
        )
        health = {rule["name"]: rule["health"] for group in api("rules")["groups"] for rule in group["rules"]}
        assert set(health.values()) == {"ok"}, health
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        server.stderr.close()
        exposition.shutdown()
        exposition.server_close()
        metrics.DEAD_LETTERS_PENDING.remove("prometheus-test")
