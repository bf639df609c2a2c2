"""Where schema steps record their progress: ``dualwrite_schema_steps`` (state revision 3).

One row per ``(migration, operation, step)``: ``status`` (``started``, ``done``, ``failed``,
``rolled_back``, ``pending``), a ``detail`` document (what a step must restore later, recorded
*before* it changes anything; results of a rewrite or a scan) and timestamps. Each write is
its own short autocommit statement, so progress survives a killed process; the catalog stays
the truth of what exists (every step re-checks it), the journal keeps what the catalog cannot
tell any more (which columns were ``NOT NULL`` before the expand dropped it, the definition of
an index the contract dropped).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import asyncpg

from dualwrite.errors import ConfigError
from dualwrite.schema import state_revisions

__all__ = ["Journal", "ensure_journal"]

JOURNAL_TABLE = "dualwrite_schema_steps"
_WRITE_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '60s'"


async def ensure_journal(conn: asyncpg.Connection) -> None:
    """Bring the state tables up to the revision that has the journal (an older dualwrite's
    database), or say that the state-tables revision has not run yet."""
    has_state, has_journal = await conn.fetchrow(
        "SELECT to_regclass('dualwrite_migrations') IS NOT NULL, "
        f"to_regclass('{JOURNAL_TABLE}') IS NOT NULL"
    )
    if has_journal:
        return
    if not has_state:
        raise ConfigError(
            "the dualwrite state tables are missing: the state-tables revision must run "
            "before any dualwrite schema step (`dualwrite db upgrade`)"
        )
    has_version = await conn.fetchval("SELECT to_regclass('dualwrite_state_version') IS NOT NULL")
    current = 1
    if has_version:
        current = int(await conn.fetchval("SELECT max(version) FROM dualwrite_state_version") or 1)
    async with conn.transaction():
        for statement in state_revisions.upgrade_statements(current):
            await conn.execute(statement)


class Journal:
    """The journal rows of one ``operation`` (``expand``, ``contract``, ...) of a migration."""

    def __init__(self, conn: asyncpg.Connection, migration: str, operation: str) -> None:
        self.conn, self.migration, self.operation = conn, migration, operation

    async def entries(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """``step -> (status, detail)`` for this operation."""
        rows = await self.conn.fetch(
            f"SELECT step, status, detail FROM {JOURNAL_TABLE} "
            "WHERE migration = $1 AND operation = $2",
            self.migration,
            self.operation,
        )
        return {r[0]: (r[1], _doc(r[2])) for r in rows}

    async def detail(self, step: str) -> dict[str, Any] | None:
        row = await self.conn.fetchrow(
            f"SELECT detail FROM {JOURNAL_TABLE} "
            "WHERE migration = $1 AND operation = $2 AND step = $3",
            self.migration,
            self.operation,
            step,
        )
        return None if row is None else _doc(row[0])

    async def record(
        self,
        step: str,
        status: str,
        *,
        position: int = 0,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Upsert the row of ``step``; ``detail`` keys are merged into what is recorded."""
        async with self.conn.transaction():
            await self.conn.execute(_WRITE_LOCK_TIMEOUT)
            await self.conn.execute(
                f"INSERT INTO {JOURNAL_TABLE} AS j (migration, operation, step, position, "
                "status, detail, started_at, finished_at) VALUES ($1, $2, $3, $4, $5, "
                "CAST($6 AS jsonb), clock_timestamp(), "
                "CASE WHEN $5 IN ('done', 'rolled_back') THEN clock_timestamp() END) "
                "ON CONFLICT (migration, operation, step) DO UPDATE SET status = $5, "
                "position = $4, detail = j.detail || CAST($6 AS jsonb), "
                "started_at = CASE WHEN $5 = 'started' THEN clock_timestamp() "
                "ELSE j.started_at END, "
                "finished_at = CASE WHEN $5 IN ('done', 'rolled_back') THEN clock_timestamp() "
                "END, updated_at = clock_timestamp()",
                self.migration,
                self.operation,
                step,
                position,
                status,
                json.dumps(dict(detail or {})),
            )

    async def forget(self, *operations: str) -> None:
        """Delete the rows of ``operations`` (default: this one) of the migration."""
        async with self.conn.transaction():
            await self.conn.execute(_WRITE_LOCK_TIMEOUT)
            await self.conn.execute(
                f"DELETE FROM {JOURNAL_TABLE} WHERE migration = $1 AND operation = ANY($2)",
                self.migration,
                list(operations or (self.operation,)),
            )


def _doc(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})
