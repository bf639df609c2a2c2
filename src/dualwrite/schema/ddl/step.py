"""What every schema step is: it knows whether it is done, what to record before it changes
anything, how to start, how to complete, and how to roll back (in the pgroll spirit).

A step is idempotent from any partial state: :meth:`Step.done` reads the catalog (never only
the journal), :meth:`Step.start` and :meth:`Step.complete` skip what already exists, and
:meth:`Step.capture` runs once, before the first change, so a rerun after a kill never records
the already-changed state as the original (the expand's ``NOT NULL`` columns).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dualwrite.schema.ddl.context import DdlContext

__all__ = ["Step", "column_attributes", "relation_exists"]


class Step:
    """Base class: override :meth:`done` and :meth:`start` (and the others when they apply)."""

    name: str = "step"

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        """Whether nothing is left to do (read from the catalog)."""
        raise NotImplementedError

    def captured(self, detail: dict[str, Any]) -> bool:
        """Whether :meth:`capture` already ran (its keys are in the recorded ``detail``)."""
        return True

    async def capture(self, ctx: DdlContext) -> dict[str, Any]:
        """What must be restored later, read before the first change (recorded in the
        journal)."""
        return {}

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        """The forward change (each statement in its own short transaction)."""
        raise NotImplementedError

    async def complete(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        """A second stage that needs the first committed (``VALIDATE`` after ``NOT VALID``)."""

    async def rollback(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        """Undo :meth:`start` (used when :meth:`complete` refuses)."""


async def column_attributes(
    conn: asyncpg.Connection, table: str, columns: list[str]
) -> dict[str, tuple[bool, str]]:
    """``column -> (not_null, format_type)`` for the live columns of ``table`` among
    ``columns``."""
    rows = await conn.fetch(
        "SELECT attname, attnotnull, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped "
        "AND attname = ANY($2::text[])",
        table,
        columns,
    )
    return {str(r[0]): (bool(r[1]), str(r[2])) for r in rows}


async def relation_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))
