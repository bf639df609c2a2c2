"""The two dashboards: generated from dashboards/generate.py, stable uids, a datasource variable,
only metrics dualwrite exports, the reference service's routes and targets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from dashboards import generate
from prometheus_client import CollectorRegistry

from clients_service.app import create_app
from clients_service.gate import BULK_READ, DEFAULT_THRESHOLDS_MS, SINGLE_READ
from dualwrite.metrics import HTTP_BUCKETS, Metrics
from tests.conftest import make_settings

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
UIDS = {"dualwrite-migration.json": "dualwrite-migration", "dualwrite-api.json": "dualwrite-api"}


def exported_sample_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_count", "_sum"):
            names.add(family.name + suffix)
    return names


def dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((DASHBOARDS / name).read_text()) for name in UIDS}


def panel_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel (rows have none)."""
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_committed_json_is_what_the_code_generates(name: str) -> None:
    generated = generate.render(generate.DASHBOARDS[name])
    assert (DASHBOARDS / name).read_text() == generated, "run: uv run python dashboards/generate.py"


def test_exactly_the_two_dashboards_with_stable_uids_and_unique_panel_ids() -> None:
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(UIDS)
    for name, dash in dashboards().items():
        assert dash["uid"] == UIDS[name]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), name
        assert len(panel_queries(dash)) >= 10, name


def test_every_query_uses_an_exported_metric() -> None:
    exported = exported_sample_names()
    for name, dash in dashboards().items():
        for title, expr in panel_queries(dash):
            for metric in re.findall(r"\bdualwrite_[a-z_]+", expr):
                assert metric in exported, f"{name} / {title}: {metric} is not exported"


def test_dashboards_pick_the_datasource_through_a_template_variable() -> None:
    for name, dash in dashboards().items():
        text = (DASHBOARDS / name).read_text()
        assert "DS_PROMETHEUS" not in text and "__inputs" not in text
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["migration"]["datasource"]["uid"] == "${datasource}"
        for panel in dash["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_latency_panels_use_the_app_routes_and_the_gate_targets() -> None:
    app_routes = set(create_app(make_settings()).openapi()["paths"])  # route templates
    api = dashboards()["dualwrite-api.json"]
    limits = {}
    for panel in api["panels"]:
        steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {})
        for _, expr in panel_queries({"panels": [panel]}):
            for route in re.findall(r'route="([^"]+)"', expr):
                assert route in app_routes, route
                if len(steps.get("steps", [])) > 1:
                    limits[route] = steps["steps"][1]["value"]
    assert limits == {
        "/workspaces/{workspace_id}/clients/{client_id}": DEFAULT_THRESHOLDS_MS[SINGLE_READ] / 1000,
        "/workspaces/{workspace_id}/clients": DEFAULT_THRESHOLDS_MS[BULK_READ] / 1000,
    }
    for limit in limits.values():  # exact comparisons: the targets are bucket bounds
        assert limit in HTTP_BUCKETS


def test_provisioning_points_grafana_at_the_dashboards_folder() -> None:
    provider = (DASHBOARDS / "provisioning" / "dashboards" / "dualwrite.yml").read_text()
    datasource = (DASHBOARDS / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "type: file" in provider and "path: /var/lib/grafana/dashboards/dualwrite" in provider
    assert "type: prometheus" in datasource
