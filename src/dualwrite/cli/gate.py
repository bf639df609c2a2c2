"""``dualwrite gate`` — run the Locust latency gate against a live service, record the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dualwrite import gate as gate_mod
from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, echo_json, fail, run_async, settings


@app.command("gate")
@cli_errors
def gate(
    host: Annotated[
        str, typer.Option(help="base URL of the running service")
    ] = "http://127.0.0.1:8000",
    migration: Annotated[
        str, typer.Option(help="migration the verdict is recorded for")
    ] = "clients_pii",
    users: Annotated[int, typer.Option(min=1, max=1000)] = 8,
    duration: Annotated[str, typer.Option(help="Locust run time, e.g. 20s, 2m")] = "20s",
    single_p95_ms: Annotated[float, typer.Option(help="single client read p95 limit")] = 100.0,
    bulk_p95_ms: Annotated[float, typer.Option(help="bulk read of 100 p95 limit")] = 1000.0,
    locustfile: Annotated[Path, typer.Option()] = Path("loadtests/locustfile.py"),
    record: Annotated[bool, typer.Option(help="record the verdict for the phase guards")] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load the service with Locust; fail on any p95 over its limit or any failed request."""
    s = settings()
    token = s.api_token.get_secret_value() if s.api_token else None
    stats = gate_mod.run_locust(
        host, locustfile=locustfile, users=users, duration=duration, api_token=token
    )
    thresholds = gate_mod.thresholds_ms(single_p95_ms, bulk_p95_ms)
    verdict = gate_mod.judge(stats, thresholds)

    async def save() -> str:
        from dualwrite import store  # SQLAlchemy: imported here so --help stays quick
        from dualwrite.db import open_engine

        async with open_engine(s) as engine, engine.begin() as conn:
            state = await store.get_migration(conn, migration)
            await store.record_gate(conn, migration, state.phase, verdict.passed, verdict.summary())
            return state.phase.value

    phase = run_async(save()) if record else None
    if as_json:
        echo_json({**verdict.summary(), "phase": phase})
    else:
        table = Table(title=f"latency gate ({'recorded in ' + phase if phase else 'not recorded'})")
        for col in ("endpoint", "requests", "failures", "p95 ms", "limit ms"):
            table.add_column(col)
        for e in verdict.endpoints:
            limit = thresholds.get(e.name)
            table.add_row(
                e.name,
                str(e.requests),
                str(e.failures),
                f"{e.p95_ms:.0f}",
                f"{limit:.0f}" if limit else "-",
            )
        console.print(table)
    if not verdict.passed:
        raise fail("latency gate failed: " + "; ".join(verdict.failures))
    console.print("[green]latency gate passed[/green]")
