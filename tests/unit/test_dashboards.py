"""Dashboards reference only metrics dualwrite exports, through a datasource variable."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from dualwrite.metrics import Metrics

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"


def exported_sample_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
            names.add(family.name + suffix)
    return names


def test_every_dashboard_query_uses_an_exported_metric() -> None:
    exported = exported_sample_names()
    files = list(DASHBOARDS.glob("*.json"))
    assert files
    for path in files:
        dash = json.loads(path.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        assert exprs, path
        for expr in exprs:
            for name in re.findall(r"\bdualwrite_[a-z_]+", expr):
                assert name in exported, f"{path.name}: {name} is not exported"


def test_dashboards_pick_the_datasource_through_a_template_variable() -> None:
    for path in DASHBOARDS.glob("*.json"):
        text = path.read_text()
        assert "DS_PROMETHEUS" not in text and "__inputs" not in text
        dash = json.loads(text)
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
