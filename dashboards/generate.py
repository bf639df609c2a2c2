"""Build the two Grafana dashboards of dualwrite from code (grafana-foundation-sdk).

    uv run python dashboards/generate.py           # rewrite dashboards/*.json
    uv run python dashboards/generate.py --check   # exit 1 if the committed JSON is stale

* ``dualwrite-migration.json`` (uid ``dualwrite-migration``): phase timeline and time in phase,
  fleet by observed phase and instances behind, coverage, backfill rate / ETA / remaining /
  throttle and pause, batch duration, latest verification, shadow-read mismatches, read
  fallbacks, decrypt failures, latency-gate verdict, key expiry.
* ``dualwrite-api.json`` (uid ``dualwrite-api``): p50/p95/p99 of the single read and the bulk
  read against the reference service's targets (``clients_service.gate``), p95 of every route,
  requests and 5xx ratio, encrypt/decrypt latency per row, and p95 per observed phase.

Both pick their Prometheus through the ``datasource`` template variable (no ``__inputs``, so
file provisioning works as is) and filter by the ``migration`` variable. Panel ids and uids are
stable: links and provisioned copies survive regeneration. The JSON files are what Grafana
loads; ``tests/unit/test_dashboards.py`` fails when they differ from what this code builds, and
the Prometheus test evaluates every panel query against live processes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

from clients_service.gate import BULK_READ, DEFAULT_THRESHOLDS_MS, SINGLE_READ

HERE = Path(__file__).resolve().parent
DS = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
M = 'migration="$migration"'
HTTP = "dualwrite_http_request_duration_seconds"

TARGETS = (
    # (title, method, route template as the app labels it, target in seconds)
    ("Single read", "GET", "/workspaces/{workspace_id}/clients/{client_id}", SINGLE_READ),
    ("Bulk read (pages of up to 100)", "GET", "/workspaces/{workspace_id}/clients", BULK_READ),
)


def target_seconds(gate_name: str) -> float:
    return DEFAULT_THRESHOLDS_MS[gate_name] / 1000.0


# --- small builders ----------------------------------------------------------------------


def q(expr: str, legend: str | None = None, ref: str = "A") -> Dataquery:
    query = Dataquery().expr(expr).ref_id(ref).datasource(DS)
    return query.legend_format(legend) if legend is not None else query


def _targets(panel: Any, queries: Sequence[Dataquery]) -> Any:
    for i, query in enumerate(queries):
        panel = panel.with_target(query.ref_id(chr(ord("A") + i)))
    return panel


def _threshold(panel: Any, limit: float | None) -> Any:
    steps = [dash_m.Threshold(None, "green")]
    if limit is not None:
        steps.append(dash_m.Threshold(limit, "red"))
    return panel.thresholds(
        dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE).steps(steps)
    )


P = TypeVar("P", timeseries.Panel, stat.Panel)


def _panel(panel: P, pid: int, title: str, description: str, unit: str, size: tuple[int, int]) -> P:
    """The parts every panel shares: id, title, description, datasource, unit, size."""
    width, height = size
    return (
        panel.id(pid)
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(width)
        .height(height)
    )


def graph(
    pid: int,
    title: str,
    description: str,
    unit: str,
    *queries: Dataquery,
    limit: float | None = None,
    stacked: bool = False,
    width: int = 12,
) -> timeseries.Panel:
    panel = _panel(timeseries.Panel(), pid, title, description, unit, (width, 8)).legend(
        common_b.VizLegendOptions()
        .display_mode(common_m.LegendDisplayMode.LIST)
        .placement(common_m.LegendPlacement.BOTTOM)
        .show_legend(True)
    )
    if limit is not None:
        panel = panel.thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common_m.GraphTresholdsStyleMode.LINE)
        )
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common_m.StackingMode.NORMAL))
    return _targets(_threshold(panel, limit), queries)  # type: ignore[no-any-return]


def single(
    pid: int,
    title: str,
    description: str,
    unit: str,
    *queries: Dataquery,
    limit: float | None = None,
    mappings: dict[str, tuple[str, str]] | None = None,
    width: int = 6,
) -> stat.Panel:
    panel = _panel(stat.Panel(), pid, title, description, unit, (width, 5)).reduce_options(
        common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
    )
    if mappings:
        options = {
            value: dash_m.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(sorted(mappings.items()))
        }
        panel = panel.mappings([dash_m.ValueMap(options=options)])
    return _targets(_threshold(panel, limit), queries)  # type: ignore[no-any-return]


def row(pid: int, title: str) -> dash_b.Row:
    return dash_b.Row(title).id(pid)


def variables(board: dash_b.Dashboard) -> dash_b.Dashboard:
    return board.with_variable(
        dash_b.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    ).with_variable(
        dash_b.QueryVariable("migration")
        .label("Migration")
        .datasource(DS)
        .query("label_values(dualwrite_phase, migration)")
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
    )


def board(uid: str, title: str, description: str) -> dash_b.Dashboard:
    return variables(
        dash_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["dualwrite"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone(common_m.TimeZoneBrowser)
        .editable()
    )


# --- the migration dashboard ---------------------------------------------------------------


def migration_dashboard() -> dash_b.Dashboard:
    remaining = f"min by (mode) (dualwrite_backfill_rows_remaining{{{M}}})"
    done_rate = f'sum by (mode) (rate(dualwrite_backfill_rows_total{{{M}, outcome="done"}}[5m]))'
    b = board(
        "dualwrite-migration",
        "dualwrite — migration",
        "Where a live encryption migration stands: phase, fleet, backfill, verification, "
        "read health and keys. API instances export phase/fleet/reads/keys/gate/verification; "
        "backfill workers export progress (--metrics-port).",
    )
    b = b.with_row(row(101, "Phase and fleet"))
    b = b.with_panel(
        statetimeline.Panel()
        .id(1)
        .title("Phase timeline")
        .description("The phase each API instance observes (state row, NOTIFY and polling).")
        .datasource(DS)
        .span(12)
        .height(8)
        .show_value(common_m.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .with_target(q(f"max by (phase) (dualwrite_phase{{{M}}}) == 1", "{{phase}}"))
    )
    b = b.with_panel(
        graph(
            2,
            "Fleet by observed phase",
            "Live instances (heartbeat within 3 poll intervals) per phase they observe.",
            "short",
            q(f"max by (phase) (dualwrite_instances{{{M}}})", "{{phase}}"),
            stacked=True,
        )
    )
    b = b.with_panel(
        single(
            3,
            "Time in phase",
            "Since the state row entered its current phase (database clock).",
            "s",
            q(f"time() - max(dualwrite_phase_changed_timestamp_seconds{{{M}}})"),
        )
    )
    b = b.with_panel(
        single(
            4,
            "Instances behind",
            "Live instances that have not observed the current state version yet; "
            "the next phase change waits for them.",
            "short",
            q(f"max(dualwrite_instances_behind{{{M}}})"),
            limit=1,
        )
    )
    b = b.with_panel(
        single(
            5,
            "State version",
            "The oldest state-row version any scraped process observes.",
            "none",
            q(f"min(dualwrite_phase_version{{{M}}})"),
        )
    )
    b = b.with_panel(
        single(
            6,
            "Latency gate",
            "The latest recorded `dualwrite gate` verdict; read_switch and contract need a "
            "pass recorded in the current phase.",
            "none",
            q(f"min(dualwrite_latency_gate_passed{{{M}}})"),
            mappings={"0": ("failed", "red"), "1": ("passed", "green")},
        )
    )
    b = b.with_row(row(102, "Backfill"))
    b = b.with_panel(
        single(
            7,
            "Coverage",
            "Share of the table's rows the mode has done: 1 - rows left / rows in the table, "
            "both counted by the backfill worker at each pass (no scan per scrape).",
            "percentunit",
            q(
                f"1 - {remaining} / on () group_left max(dualwrite_table_rows{{{M}}})",
                "{{mode}}",
            ),
        )
    )
    b = b.with_panel(
        single(
            8,
            "ETA",
            "Rows left divided by the rows converted per second over the last 5 minutes "
            "(all workers). Infinite while paused or stalled.",
            "s",
            q(f"{remaining} / {done_rate}", "{{mode}}"),
        )
    )
    b = b.with_panel(
        single(
            9,
            "Rows left",
            "The lowest count of any backfill worker for the running mode.",
            "short",
            q(remaining, "{{mode}}"),
        )
    )
    b = b.with_panel(
        single(
            10,
            "Failed rows (1 h)",
            "Rows the backfiller could not convert (undecryptable ciphertext, in decrypt / "
            "rekey / purge); their primary keys are in the worker's JSON lines.",
            "short",
            q(
                "sum by (mode) (increase(dualwrite_backfill_rows_total"
                f'{{{M}, outcome="failed"}}[1h]))',
                "{{mode}}",
            ),
            limit=1,
        )
    )
    b = b.with_panel(
        graph(
            11,
            "Backfill rate",
            "Rows converted per second, all workers.",
            "rowsps",
            q(done_rate, "{{mode}}"),
        )
    )
    b = b.with_panel(
        graph(
            12,
            "Throttle and pause",
            "1 while the backfiller holds back: paused (knob), rate (max_rows_per_second, "
            "sleep_ratio) or health (active backends, replication lag).",
            "short",
            q(f"max by (reason) (dualwrite_backfill_throttled{{{M}}})", "{{reason}}"),
        )
    )
    b = b.with_panel(
        graph(
            13,
            "Rows left over time",
            "Falling while the backfill runs; flat and above zero means stalled.",
            "short",
            q(remaining, "{{mode}}"),
        )
    )
    b = b.with_panel(
        graph(
            14,
            "Batch duration p95",
            "One batch = claim, convert, write and checkpoint, in one transaction.",
            "s",
            q(
                "histogram_quantile(0.95, sum by (le, mode) "
                f"(rate(dualwrite_backfill_batch_duration_seconds_bucket{{{M}}}[5m])))",
                "{{mode}}",
            ),
        )
    )
    b = b.with_row(row(103, "Verification and reads"))
    b = b.with_panel(
        single(
            15,
            "Latest full verification",
            "Findings of the newest full `dualwrite verify` run, by kind (0 to move on).",
            "short",
            q(f"max by (kind) (dualwrite_verification_findings{{{M}}})", "{{kind}}"),
            limit=1,
            width=8,
        )
    )
    b = b.with_panel(
        single(
            16,
            "Since the latest verification",
            "Time since the newest full verification finished.",
            "s",
            q(f"time() - max(dualwrite_verification_timestamp_seconds{{{M}}})"),
            width=4,
        )
    )
    b = b.with_panel(
        graph(
            17,
            "Shadow reads and mismatches",
            "Sampled reads compared with the other source (per second) and those that "
            "disagreed (per 5 minutes); any mismatch blocks contract.",
            "short",
            q(f"sum(rate(dualwrite_shadow_reads_total{{{M}}}[5m]))", "compared/s"),
            q(
                f"sum by (field) (increase(dualwrite_shadow_read_mismatches_total{{{M}}}[5m]))",
                "mismatches {{field}}",
            ),
        )
    )
    b = b.with_panel(
        graph(
            18,
            "Read fallbacks",
            "Reads served from plaintext because the ciphertext was missing (per 5 minutes).",
            "short",
            q(
                f"sum by (field) (increase(dualwrite_read_fallback_total{{{M}}}[5m]))",
                "{{field}}",
            ),
        )
    )
    b = b.with_panel(
        graph(
            19,
            "Decrypt failures",
            "Stored ciphertexts that failed authentication (per 5 minutes); each one answered 500.",
            "short",
            q(
                "sum by (field) (increase(dualwrite_crypto_failures_total"
                f'{{{M}, operation="decrypt"}}[5m]))',
                "{{field}}",
            ),
        )
    )
    b = b.with_row(row(104, "Keys"))
    return b.with_panel(
        single(
            20,
            "Days until key expiry",
            "Per data key version held by the scraped processes (alert under 14 days).",
            "d",
            q(
                "min by (version) (dualwrite_key_expiry_timestamp_seconds - time()) / 86400",
                "{{version}}",
            ),
            width=12,
        )
    ).with_panel(
        single(
            21,
            "Current key",
            "The key version new ciphertexts are encrypted with.",
            "none",
            q("max by (version) (dualwrite_key_current) == 1", "{{version}}"),
            width=12,
        )
    )


# --- the API dashboard -------------------------------------------------------------------------


def _quantile(quantile: float, selector: str, by: str = "") -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le{by}) (rate({HTTP}_bucket{{{selector}}}[5m])))"
    )


def api_dashboard() -> dash_b.Dashboard:
    b = board(
        "dualwrite-api",
        "dualwrite — API",
        "Request latency against the targets, errors, the cost of encryption per row and "
        "latency per observed phase. Exported by every API instance on /metrics.",
    )
    b = b.with_row(row(105, "Latency against the targets"))
    pid = 1
    for title, method, route, gate_name in TARGETS:
        limit = target_seconds(gate_name)
        selector = f'method="{method}", route="{route}"'
        b = b.with_panel(
            graph(
                pid,
                f"{title}: p50 / p95 / p99",
                f"{method} {route}, all instances; the red line is the p95 target "
                f"({limit * 1000:.0f} ms).",
                "s",
                *(q(_quantile(x, selector), f"p{round(x * 100)}") for x in (0.5, 0.95, 0.99)),
                limit=limit,
            )
        )
        pid += 1
    b = b.with_panel(
        graph(
            pid,
            "p95 by route",
            "Every route template but /metrics (never a raw path: no ids in labels).",
            "s",
            q(_quantile(0.95, 'route!="/metrics"', ", method, route"), "{{method}} {{route}}"),
        )
    )
    b = b.with_panel(
        graph(
            pid + 1,
            "Requests by status",
            "Requests per second by HTTP status.",
            "reqps",
            q(f"sum by (status) (rate({HTTP}_count[5m]))", "{{status}}"),
        )
    )
    b = b.with_panel(
        graph(
            pid + 2,
            "5xx ratio",
            "Share of requests answered 5xx (alert above 1% for 5 minutes).",
            "percentunit",
            q(
                f'(sum(rate({HTTP}_count{{status=~"5.."}}[5m])) or vector(0)) '
                f"/ sum(rate({HTTP}_count[5m]))",
                "5xx",
            ),
            limit=0.01,
        )
    )
    b = b.with_row(row(106, "Encryption cost"))
    b = b.with_panel(
        graph(
            pid + 3,
            "Crypto p95",
            "Encrypting / decrypting one row's fields (all of them together), p95.",
            "s",
            q(
                "histogram_quantile(0.95, sum by (le, operation) "
                "(rate(dualwrite_crypto_operation_duration_seconds_bucket[5m])))",
                "{{operation}}",
            ),
        )
    )
    b = b.with_panel(
        graph(
            pid + 4,
            "Crypto operations",
            "Timed encrypt / decrypt operations per second: a sample (one row in 8 written or read "
            "alone, one per bulk read), a relative rate rather than a row count.",
            "ops",
            q(
                "sum by (operation) (rate(dualwrite_crypto_operation_duration_seconds_count[5m]))",
                "{{operation}}",
            ),
        )
    )
    b = b.with_row(row(107, "Per phase"))
    phase_of = f"group_left (phase) topk by (instance) (1, dualwrite_phase{{{M}}})"
    pid += 5
    for title, method, route, gate_name in TARGETS:
        limit = target_seconds(gate_name)
        rate = f'rate({HTTP}_bucket{{method="{method}", route="{route}"}}[5m])'
        b = b.with_panel(
            graph(
                pid,
                f"{title}: p95 per observed phase",
                "The same p95, split by the phase each instance observed: compare the "
                "plaintext baseline with dual_write, backfill and read_switch.",
                "s",
                q(
                    f"histogram_quantile(0.95, sum by (le, phase) ({rate} * on (instance) "
                    f"{phase_of}))",
                    "{{phase}}",
                ),
                limit=limit,
            )
        )
        pid += 1
    return b


DASHBOARDS = {
    "dualwrite-migration.json": migration_dashboard,
    "dualwrite-api.json": api_dashboard,
}


def render(build: Any) -> str:
    """The JSON text of one dashboard, as committed (sorted keys, 2-space indent)."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file differs")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = HERE / name, render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
