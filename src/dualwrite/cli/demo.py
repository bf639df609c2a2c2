"""``dualwrite demo`` — the whole migration on an embedded PostgreSQL, under live traffic."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dualwrite.cli import app
from dualwrite.cli._common import (
    cli_errors,
    console,
    echo_json,
    err_console,
    fail,
    run_async,
    settings,
)


@app.command("demo")
@cli_errors
def demo(
    rows: Annotated[
        int, typer.Option(min=100, max=5_000_000, help="plaintext clients to seed")
    ] = 20_000,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the summary as one JSON object (progress: stderr)")
    ] = False,
) -> None:
    """Seed plaintext clients, then encrypt them live: every phase, real guards, no lost write."""
    import importlib
    import os

    from dualwrite.logs import setup_logging

    s = settings()
    if "LOG_LEVEL" not in os.environ:  # the demo's story is its output: only problems logged
        setup_logging(fmt=s.log_format, level="warning", settings=None)
    module, _, attr = s.reference_demo.partition(":")
    try:
        run_demo = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise fail(f"REFERENCE_DEMO {s.reference_demo!r} is not importable") from None
    say = err_console.print if as_json else console.print
    summary = run_async(run_demo(s, rows=rows, say=say))
    if as_json:
        echo_json(summary.as_json())
        if summary.lost_writes or summary.writes_failed or summary.residual_plaintext:
            raise typer.Exit(1)
        return
    table = Table(title="dualwrite demo")
    table.add_column("")
    table.add_column("result")
    table.add_row("plaintext rows seeded", f"{summary.rows_seeded:,}")
    table.add_row("backfill throughput", f"{summary.backfill_rows_per_s:,.0f} rows/s")
    table.add_row(
        "writes during the migration", f"{summary.writes_ok:,} ok, {summary.writes_failed} failed"
    )
    table.add_row("clients read back", f"{summary.clients_checked:,}")
    table.add_row("lost writes", str(summary.lost_writes))
    rewrite = summary.rewrite
    if rewrite.get("status") == "done":
        lock = rewrite.get("lock_seconds")
        held = f"{lock:.2f} s ACCESS EXCLUSIVE" if lock is not None else "online"
        table.add_row("rewrite", f"{rewrite.get('method')}, {held}")
    else:
        table.add_row("rewrite", f"{rewrite.get('status')}: {rewrite.get('reason')}")
    residual = summary.residual_plaintext
    table.add_row("residual plaintext", "not scanned" if residual is None else str(residual))
    p95 = ", ".join(f"{k} {v:.0f}" for k, v in summary.p95_ms_per_phase.items())
    table.add_row("write p95 per phase (ms)", p95)
    console.print(table)
    if summary.lost_writes or summary.writes_failed:
        raise fail(f"{summary.lost_writes} lost writes, {summary.writes_failed} failed writes")
    if residual:
        raise fail(f"{residual} sampled plaintext values still in the table's files")
    console.print("[green]migration finalized with zero lost writes[/green]")
