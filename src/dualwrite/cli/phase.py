"""``dualwrite phase show|set`` and ``dualwrite finalize`` — phase control straight on the database.

Same guards, compare-and-swap and audit as the admin API (both call
:mod:`dualwrite.control.transitions`), so the CLI works with no API running:

    $ dualwrite phase show
    $ dualwrite phase set clients_pii dual_write --reason "start encryption"
    $ dualwrite phase set clients_pii read_switch --reason "gate flaky, checked by hand" --force
    $ dualwrite finalize clients_pii --reason "purge verified"
    $ dualwrite phase set dual_write --reason "start"   # the only registered migration

A refused change exits 1 and lists every failing guard, one per line. The actor recorded in the
audit log defaults to ``cli:<user>@<host>``.
"""

from __future__ import annotations

import getpass
import socket
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dualwrite.cli import app
from dualwrite.cli._common import (
    cli_errors,
    console,
    echo_json,
    err_console,
    run_async,
    settings,
    show_progress,
)
from dualwrite.errors import DualwriteError, GuardsFailedError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from dualwrite.config import Settings
    from dualwrite.control.purge import PurgeReport
    from dualwrite.state.registry import MigrationState

# SQLAlchemy-backed modules (store, transitions, report, db) are imported inside the functions:
# ``dualwrite --help`` stays quick.

phase_app = typer.Typer(help="Show or change the phase of a migration.", no_args_is_help=True)


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def current_key_version(s: Settings) -> str | None:
    """The configured current key version, or ``None`` (the key guard then explains)."""
    from dualwrite.crypto import load_keyring

    try:
        return load_keyring(s).current.version
    except DualwriteError:
        return None


def refused(exc: GuardsFailedError) -> typer.Exit:
    """Print the refusal and each failing guard on its own line; exit 1."""
    head = str(exc).split(": ", 1)[0]
    err_console.print(f"[red]error:[/red] {head}: {len(exc.failures)} guard(s) failed", markup=True)
    for failure in exc.failures:
        err_console.print(f"  - {failure.name}: {failure.reason}", markup=False, soft_wrap=True)
    err_console.print("  (override with --force and a --reason; the audit log keeps it)")
    return typer.Exit(1)


async def selected_states(conn: AsyncConnection, name: str | None) -> list[MigrationState]:
    """Migration ``name``, or every migration when ``name`` is ``None`` (``show``, ``status``)."""
    from dualwrite.state import registry

    if name is not None:
        return [await registry.get_migration(conn, name)]
    return await registry.list_migrations(conn)


def print_states(states: list[MigrationState]) -> None:
    from dualwrite.control.report import state_summary

    table = Table("migration", "table", "phase", "version", "changed at", "reads", "writes")
    for s in states:
        b = state_summary(s)["behaviour"]
        assert isinstance(b, dict)
        writes = "+".join(
            w
            for w, on in (
                ("plaintext", b["writes_plaintext"]),
                ("ciphertext", b["writes_ciphertext"]),
            )
            if on
        )
        table.add_row(
            s.name,
            s.table,
            s.phase.value,
            str(s.version),
            s.changed_at.isoformat(timespec="seconds"),
            str(b["reads_from"]),
            writes,
        )
    console.print(table)


@phase_app.command("show")
@cli_errors
def show(
    name: Annotated[str | None, typer.Argument(help="migration (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show the phase and version of one or every migration."""
    from dualwrite.control.report import state_summary
    from dualwrite.db import open_engine

    s = settings()

    async def go() -> list[MigrationState]:
        async with open_engine(s) as engine, engine.connect() as conn:
            return await selected_states(conn, name)

    states = run_async(go())
    if as_json:
        echo_json([state_summary(st) for st in states])
    else:
        print_states(states)


async def _change(
    s: Settings, name: str | None, target: str, *, actor: str, reason: str | None, force: bool
) -> MigrationState:
    from dualwrite.control import transitions
    from dualwrite.db import open_engine
    from dualwrite.state import registry

    async with open_engine(s) as engine:
        async with engine.connect() as conn:
            name = await registry.resolve_name(conn, name)  # one line when several
        return await transitions.change_phase(
            engine,
            name,
            target,
            actor=actor,
            reason=reason,
            force=force,
            settings=s,
            keyring_current=current_key_version(s),
        )


def _run_change(
    name: str | None, target: str, reason: str | None, force: bool, actor: str | None
) -> MigrationState:
    s = settings()
    try:
        new = run_async(
            _change(s, name, target, actor=actor or default_actor(), reason=reason, force=force)
        )
    except GuardsFailedError as exc:
        raise refused(exc) from None
    console.print(f"{new.name}: now in {new.phase.value} (version {new.version})")
    return new


@phase_app.command("set")
@cli_errors
def set_phase(
    name: Annotated[
        str, typer.Argument(help="migration name (omit it when only one is registered)")
    ],
    target: Annotated[str | None, typer.Argument(help="phase to move to (one step)")] = None,
    reason: Annotated[str | None, typer.Option(help="why (kept in the audit log)")] = None,
    force: Annotated[bool, typer.Option(help="override failing guards (needs --reason)")] = False,
    actor: Annotated[str | None, typer.Option(help="who (default cli:<user>@<host>)")] = None,
) -> None:
    """Move NAME one phase forward or back, if its guards pass (or with --force)."""
    if target is None:  # `phase set TARGET`: the only registered migration
        name, target = None, name  # type: ignore[assignment]
    assert target is not None
    _run_change(name, target, reason, force, actor)


@app.command("finalize")
@cli_errors
def finalize(
    name: Annotated[
        str | None, typer.Argument(help="migration name (default: the only registered one)")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="why (kept in the audit log)")] = None,
    force: Annotated[bool, typer.Option(help="override failing guards (needs --reason)")] = False,
    actor: Annotated[str | None, typer.Option(help="who (default cli:<user>@<host>)")] = None,
    rewrite: Annotated[
        str, typer.Option("--rewrite", help="auto | repack | vacuum-full | none")
    ] = "auto",
    budget: Annotated[
        float | None,
        typer.Option(
            "--offline-rewrite-budget",
            min=0.001,
            help="seconds of ACCESS EXCLUSIVE you grant VACUUM FULL (refused over its estimate)",
        ),
    ] = None,
) -> None:
    """contract -> finalized: preflight, fence, drop the plaintext columns; then rewrite the
    table (pg_repack, or VACUUM FULL within --offline-rewrite-budget) and scan it.

    Even with --force, the fence refuses while any row still holds plaintext. A rewrite that
    cannot run now is reported pending (`dualwrite rewrite NAME` does it later).
    """
    from dualwrite.cli.remanence import load_cipher, print_purge
    from dualwrite.control.purge import rewrite_and_scan
    from dualwrite.db import open_engine
    from dualwrite.remanence import RewriteOptions

    options = RewriteOptions(rewrite, budget)  # bad options fail before anything changes
    show_progress()
    done = _run_change(name, "finalized", reason, force, actor)
    s = settings()
    try:
        cipher = load_cipher() if rewrite != "none" else None
    except DualwriteError as exc:  # no key here: the rewrite runs, the scan is skipped
        err_console.print(f"scan skipped: {exc}")
        cipher = None

    async def go() -> PurgeReport:
        async with open_engine(s, pool_size=2) as engine:
            return await rewrite_and_scan(engine, done.name, s, cipher, options)

    print_purge(run_async(go()))


app.add_typer(phase_app, name="phase")
