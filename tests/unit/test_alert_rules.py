"""The alert rules: loaded by the shipped Prometheus config, actionable annotations with a
README runbook section each, promtool-valid, and each one proven by promtool unit tests to fire
on its symptom and stay quiet on a healthy fleet (tests/prometheus/alerts_test.yml)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from clients_service.app import create_app
from clients_service.gate import BULK_READ, DEFAULT_THRESHOLDS_MS, SINGLE_READ
from dualwrite.metrics import Metrics
from tests.conftest import make_settings
from tests.harness.prometheus import DASHBOARDS, ROOT, alert_rules, promtool

README = ROOT / "README.md"
EXPECTED = {
    "DualwriteApiDown",
    "DualwriteSingleReadSlow",
    "DualwriteBulkReadSlow",
    "DualwriteRequestErrors",
    "DualwriteDecryptFailures",
    "DualwriteShadowReadMismatches",
    "DualwriteReadFallbacks",
    "DualwriteBackfillStalled",
    "DualwriteInstancesLagging",
    "DualwriteKeyExpiringSoon",
    "DualwriteLatencyGateFailing",
}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_the_shipped_prometheus_config_loads_the_rules() -> None:
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert {job["job_name"] for job in config["scrape_configs"]} == {
        "dualwrite-api",
        "dualwrite-backfill",
    }


def test_every_alert_is_there_with_actionable_annotations_and_a_runbook_section() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED
    anchors = github_anchors(README.read_text())
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        notes = rule["annotations"]
        assert len(notes["summary"]) <= 120 and "\n" not in notes["summary"], name
        assert len(notes["description"]) >= 120, f"{name}: say what to check first"
        assert notes["runbook_url"] == f"README.md#{name.lower()}", name
        assert name.lower() in anchors, f"README has no runbook section '### {name}'"
        assert "for" in rule, f"{name}: a `for:` the tests can shorten"


def test_rules_use_only_exported_metrics_and_the_reference_targets() -> None:
    exported = {f.name for f in Metrics(CollectorRegistry()).registry.collect()}
    suffixes = ("_total", "_bucket", "_count", "_sum")
    for rule in alert_rules():
        for metric in re.findall(r"\bdualwrite_[a-z_]+", rule["expr"]):
            base = next((metric.removesuffix(s) for s in suffixes if metric.endswith(s)), metric)
            assert metric in exported or base in exported, f"{rule['alert']}: {metric}"
    routes = set(create_app(make_settings()).openapi()["paths"])
    by_name = {r["alert"]: r["expr"] for r in alert_rules()}
    for alert, gate_name in (
        ("DualwriteSingleReadSlow", SINGLE_READ),
        ("DualwriteBulkReadSlow", BULK_READ),
    ):
        route = re.search(r'route="([^"]+)"', by_name[alert])
        assert route and route.group(1) in routes, alert
        threshold = float(by_name[alert].rsplit(">", 1)[1])
        assert threshold == DEFAULT_THRESHOLDS_MS[gate_name] / 1000, alert


def test_promtool_check_rules_and_config_pass() -> None:
    rules = promtool("check", "rules", str(DASHBOARDS / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"{len(EXPECTED)} rules found" in rules.stdout
    config = promtool("check", "config", str(DASHBOARDS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_fire_every_alert_and_keep_a_healthy_fleet_quiet() -> None:
    tests = Path(__file__).resolve().parents[1] / "prometheus" / "alerts_test.yml"
    doc = yaml.safe_load(tests.read_text())
    fired = {t["alertname"] for t in doc["tests"][0]["alert_rule_test"] if t.get("exp_alerts")}
    quiet = {t["alertname"] for t in doc["tests"][1]["alert_rule_test"] if not t.get("exp_alerts")}
    assert fired == quiet == EXPECTED
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_metrics_accepts_every_family() -> None:
    """Every family with a sample (the live scrapes are checked in the Prometheus test)."""
    m = Metrics(CollectorRegistry())
    for family in m.registry.collect():
        assert family.documentation, family.name
    m.set_phase("clients_pii", "backfill", 3)
    m.http_duration.labels("GET", "/healthz", "200").observe(0.01)
    m.crypto_duration.labels("decrypt").observe(0.00001)
    m.crypto_failures.labels("decrypt", "clients_pii", "email").inc()
    m.backfill_rows.labels("clients_pii", "encrypt", "done").inc(10)
    m.backfill_remaining.labels("clients_pii", "encrypt").set(5)
    m.backfill_batch_duration.labels("clients_pii", "encrypt").observe(0.2)
    m.gate_passed.labels("clients_pii").set(1)
    result = promtool("check", "metrics", stdin=m.exposition().decode())
    assert result.returncode == 0, result.stdout + result.stderr
