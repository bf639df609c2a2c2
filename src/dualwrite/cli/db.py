"""``dualwrite db upgrade|downgrade|current|stop`` — Alembic with the dualwrite engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, run_async, settings, show_progress

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import AsyncEngine

    from dualwrite.config import Settings

# Alembic and SQLAlchemy are imported inside the commands: ``dualwrite --help`` stays quick.

db_app = typer.Typer(
    help="Schema migrations (Alembic) and the embedded PostgreSQL.", no_args_is_help=True
)


def _migrate(
    s: Settings, step: Callable[[AsyncEngine, Config], Awaitable[None]] | None = None
) -> str | None:
    """Run one Alembic ``step`` (if any) on the configured database; the revision it is at."""
    from dualwrite.db import open_engine

    if step is not None:
        show_progress()
    from dualwrite.schema import migrate

    async def go() -> str | None:
        cfg = migrate.alembic_config()
        async with open_engine(s) as engine:
            if step is not None:
                await step(engine, cfg)
            return await migrate.current(engine, cfg)

    return run_async(go())


@db_app.command("upgrade")
@cli_errors
def upgrade(
    revision: Annotated[
        str | None, typer.Argument(help="target revision (default: up to the expand)")
    ] = None,
) -> None:
    """Apply revisions up to and including the expand (never the contract: see `finalize`)."""
    from dualwrite.schema import migrate

    s = settings()
    reached = _migrate(s, lambda engine, cfg: migrate.upgrade(engine, cfg, revision, settings=s))
    console.print(f"database at revision {reached}")


@db_app.command("downgrade")
@cli_errors
def downgrade(revision: Annotated[str, typer.Argument(help="target revision, -1 or base")]) -> None:
    """Revert revisions down to REVISION."""
    from dualwrite.schema import migrate

    s = settings()
    reached = _migrate(s, lambda engine, cfg: migrate.downgrade(engine, cfg, revision, settings=s))
    console.print(f"database at revision {reached or 'base'}")


@db_app.command("current")
@cli_errors
def current() -> None:
    """Print the revision the database is at."""
    console.print(_migrate(settings()) or "base")


@db_app.command("stop")
@cli_errors
def stop() -> None:
    """Stop the embedded PostgreSQL (no-op with DATABASE_URL)."""
    from dualwrite.db import stop_embedded

    s = settings()
    if s.database_url:
        console.print("DATABASE_URL is set: nothing to stop")
        return
    stopped = stop_embedded(s.data_dir)
    console.print(
        "embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running"
    )


app.add_typer(db_app, name="db")
