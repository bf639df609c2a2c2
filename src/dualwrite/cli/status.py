"""``dualwrite status [NAME] [--json]`` — one screen per migration.

Phase and behaviour, coverage, backfill progress and knobs, last verification and latency gate,
the fleet (what each instance observed, live or not) and what blocks the next move:

    $ dualwrite status
    $ dualwrite status clients_pii --json | jq .coverage.percent
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, echo_json, run_async, settings
from dualwrite.cli.phase import current_key_version, selected_states


def _short(ts: str | None) -> str:
    """``2025-01-02T03:04:05.678+00:00`` -> ``2025-01-02 03:04:05`` (reports are in UTC)."""
    return ts[:19].replace("T", " ") if ts else "-"


def _kv(rows: list[tuple[str, str]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    return t


def _duration(seconds: float) -> str:
    """``3725.0`` -> ``1h02m05s``; ``42.4`` -> ``42s``."""
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def _done(mode: str, rows: int, backfill: dict[str, Any]) -> str:
    """``encrypt 1200 (400 rows/s, ETA 5s)``: rows done with the run's rate and ETA, if known."""
    rate = backfill["rate_rows_per_s"].get(mode)
    eta = backfill["eta_seconds"].get(mode)
    shown = []
    if rate is not None:
        shown.append(f"{rate:,.0f} rows/s")
    if eta is not None:
        shown.append(f"ETA {_duration(eta)}")
    return f"{mode} {rows}" + (f" ({', '.join(shown)})" if shown else "")


def render(report: dict[str, Any]) -> Panel:
    """The rich panel of one :func:`~dualwrite.control.report.migration_report`."""
    b, cov, bf = report["behaviour"], report["coverage"], report["backfill"]
    ver, gate = report["last_verification"], report["last_gate"]
    done = ", ".join(_done(m, n, bf) for m, n in sorted(bf["rows_done"].items())) or "none"
    remaining = ", ".join(f"{m} {n}" for m, n in bf["remaining"].items())
    knobs = ", ".join(f"{k}={v}" for k, v in sorted(bf["control"].items())) or "defaults"
    verification = (
        "none"
        if ver is None
        else f"{'full' if ver['full'] else 'sample'} at {_short(ver['finished_at'])} "
        f"in {ver['phase']}: "
        f"{ver['mismatches']} mismatches, {ver['missing']} missing, "
        f"{ver['undecryptable']} undecryptable"
    )
    gate_text = (
        "none"
        if gate is None
        else f"{'passed' if gate['passed'] else 'FAILED'} at {_short(gate['finished_at'])} "
        f"in {gate['phase']}"
    )
    summary = _kv(
        [
            (
                "phase",
                f"{report['phase']} (version {report['version']}, "
                f"since {_short(report['changed_at'])})",
            ),
            (
                "reads / writes",
                f"reads {b['reads_from']}; writes plaintext={b['writes_plaintext']}, "
                f"ciphertext={b['writes_ciphertext']}",
            ),
            (
                "coverage",
                f"{cov['percent']:.2f}% of {cov['total_rows']} rows "
                f"({cov['rows_missing_ciphertext']} without ciphertext)",
            ),
            (
                "backfill",
                f"done: {done}; remaining: {remaining}; finished: {_short(bf['finished_at'])}",
            ),
            ("backfill knobs", knobs),
            *[
                (f"throttled {c['mode']}/{c['shard']}", f"{t['state']}: {t['reason']}")
                for c in bf["checkpoints"]
                if (t := c.get("throttle"))
            ],
            ("verification", verification),
            ("latency gate", gate_text),
        ]
    )
    fleet = Table(
        "instance", "observed", "keys", "last seen", "live", title="fleet", title_justify="left"
    )
    for i in report["fleet"]["instances"]:
        fleet.add_row(
            i["instance_id"],
            f"{i['observed_phase']} v{i['observed_version']}",
            ",".join(i["key_versions"]),
            _short(i["last_seen"]),
            "yes" if i["live"] else "no",
        )
    moves = Table("move", "guard", "ok", "reason", title="next moves", title_justify="left")
    for direction, decision in report["moves"].items():
        if decision is None:
            continue
        label = f"{direction} → {decision['target']}"
        for g in decision["guards"] or [{"name": "-", "passed": True, "reason": "no guards"}]:
            moves.add_row(label, g["name"], "yes" if g["passed"] else "NO", g["reason"])
            label = ""
    return Panel(Group(summary, fleet, moves), title=f"{report['name']} ({report['table']})")


@app.command("status")
@cli_errors
def status(
    name: Annotated[str | None, typer.Argument(help="migration (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Phase, coverage, backfill progress, last verification/gate and fleet on one screen."""
    from dualwrite.control.report import migration_report
    from dualwrite.db import open_engine  # SQLAlchemy: imported here so --help stays quick

    s = settings()
    key = current_key_version(s)

    async def go() -> list[dict[str, Any]]:
        async with open_engine(s) as engine, engine.connect() as conn:
            states = await selected_states(conn, name)
            return [await migration_report(conn, st, s, key) for st in states]

    reports = run_async(go())
    if as_json:
        echo_json(reports if name is None else reports[0])
        return
    for report in reports:
        console.print(render(report))
