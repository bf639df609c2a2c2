"""Which revision of dualwrite's state tables the database is at; bring it up to date.

See :mod:`dualwrite.schema.state_revisions` for the revisions themselves.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.errors import ConfigError
from dualwrite.schema.state_revisions import STATE_SCHEMA_VERSION, upgrade_statements

__all__ = ["current_state_version", "require_state_version", "upgrade_state_tables"]


async def current_state_version(conn: AsyncConnection) -> int | None:
    """The state-table revision, or ``None`` when there are no state tables at all."""
    found = await conn.execute(
        text(
            "SELECT to_regclass('dualwrite_migrations') IS NOT NULL, "
            "to_regclass('dualwrite_state_version') IS NOT NULL"
        )
    )
    has_state, has_version = found.one()
    if not has_state:
        return None
    if not has_version:
        return 1
    value = (await conn.execute(text("SELECT max(version) FROM dualwrite_state_version"))).scalar()
    return int(value) if value is not None else 1


async def upgrade_state_tables(conn: AsyncConnection) -> tuple[int | None, int | None]:
    """Apply every state revision the database lacks (in the caller's transaction).

    Returns ``(before, after)``; ``(None, None)`` when there are no state tables yet (the
    application's state-tables revision creates them).
    """
    before = await current_state_version(conn)
    if before is None:
        return None, None
    for statement in upgrade_statements(before):
        await conn.execute(text(statement))
    return before, max(before, STATE_SCHEMA_VERSION)


async def require_state_version(conn: AsyncConnection, needed: int = STATE_SCHEMA_VERSION) -> None:
    """Raise :class:`~dualwrite.errors.ConfigError` (one line) unless the state tables are at
    revision ``needed`` or later."""
    found = await current_state_version(conn)
    if found is None:
        raise ConfigError("the dualwrite state tables are missing: run `dualwrite db upgrade`")
    if found < needed:
        raise ConfigError(
            f"the dualwrite state tables are at revision {found}, this dualwrite needs "
            f"{needed}: run `dualwrite db upgrade`"
        )
