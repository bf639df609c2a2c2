"""``dualwrite demo`` — the whole migration on an embedded PostgreSQL, under live traffic."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, fail, run_async, settings


@app.command("demo")
@cli_errors
def demo(
    rows: Annotated[
        int, typer.Option(min=100, max=5_000_000, help="plaintext clients to seed")
    ] = 20_000,
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
    summary = run_async(run_demo(s, rows=rows, say=console.print))
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
    console.print(table)
    if summary.lost_writes or summary.writes_failed:
        raise fail(f"{summary.lost_writes} lost writes, {summary.writes_failed} failed writes")
    console.print("[green]migration finalized with zero lost writes[/green]")
