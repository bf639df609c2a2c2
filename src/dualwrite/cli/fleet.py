"""``dualwrite fleet list|forget`` — the instances that heartbeat a migration.

    $ dualwrite fleet list
    $ dualwrite fleet forget api-7:1234:ab12cd --migration clients_pii --reason "host destroyed"

An instance that stopped heartbeating without deregistering (killed, cut off, frozen) keeps
blocking the fleet guards for its grace period (two liveness windows plus its longest request):
it may still be writing under the phase it last observed. ``forget`` deletes its heartbeat row
once you know it is gone; it is refused for a live instance and recorded in the audit log in
the same transaction (``action = 'fleet_forget'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, echo_json, run_async, settings
from dualwrite.cli.phase import default_actor

if TYPE_CHECKING:
    from dualwrite.config import Settings

fleet_app = typer.Typer(help="List or forget the instances of the fleet.", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")

_MIGRATION = typer.Option("--migration", help="migration (default: the only registered one)")


def _status(age: float, window: float, grace: float) -> str:
    if age < window:
        return "live"
    return "vanished (blocks fleet guards)" if age < grace else "expired"


async def _list(s: Settings, name: str | None) -> tuple[str, list[dict[str, Any]]]:
    from dualwrite.db import open_engine
    from dualwrite.phases import grace_seconds, liveness_window_seconds
    from dualwrite.state import fleet, registry

    async with open_engine(s) as engine, engine.connect() as conn:
        name = await registry.resolve_name(conn, name)
        now = await registry.database_now(conn)
        rows = []
        for i in await fleet.list_instances(conn, name):
            age = (now - i.last_seen).total_seconds()
            window = liveness_window_seconds(i, s.poll_interval_seconds)
            rows.append(
                {
                    **i.summary(),
                    "seconds_since_heartbeat": round(age, 3),
                    "poll_interval_seconds": i.poll_interval_seconds,
                    "status": _status(age, window, grace_seconds(i, s.poll_interval_seconds)),
                }
            )
        return name, rows


@fleet_app.command("list")
@cli_errors
def list_fleet(
    migration: Annotated[str | None, _MIGRATION] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The instances heartbeating MIGRATION: what they observed, whether they count."""
    name, rows = run_async(_list(settings(), migration))
    if as_json:
        echo_json(rows)
        return
    table = Table("instance", "host", "pid", "phase", "version", "keys", "age", "status")
    for r in rows:
        table.add_row(
            r["instance_id"], r["host"], str(r["pid"]), r["observed_phase"] or "-",
            str(r["observed_version"]), ",".join(r["key_versions"]),
            f"{r['seconds_since_heartbeat']:.1f}s", r["status"],
        )  # fmt: skip
    console.print(f"{name}: {len(rows)} instances")
    console.print(table)


@fleet_app.command("forget")
@cli_errors
def forget(
    instance: Annotated[str, typer.Argument(help="the instance id (see `dualwrite fleet list`)")],
    reason: Annotated[str, typer.Option(help="why it is gone (kept in the audit log)")],
    migration: Annotated[str | None, _MIGRATION] = None,
    actor: Annotated[str | None, typer.Option(help="who (default cli:<user>@<host>)")] = None,
) -> None:
    """Forget a vanished INSTANCE so it no longer blocks MIGRATION's fleet guards (audited)."""
    from dualwrite.db import open_engine
    from dualwrite.state import fleet, registry

    s = settings()

    async def go() -> str:
        async with open_engine(s) as engine:
            async with engine.begin() as conn:
                name = await registry.resolve_name(conn, migration)
                await fleet.forget_instance(
                    conn, instance, name, actor=actor or default_actor(), reason=reason,
                    fallback_interval=s.poll_interval_seconds,
                )  # fmt: skip
            return name

    name = run_async(go())
    console.print(f"{name}: forgot instance {instance}")
