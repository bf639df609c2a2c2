"""Add or drop columns: one ``ALTER TABLE`` under the short lock timeout, each with its reverse.

:class:`AddColumns` adds nullable columns (no table rewrite, no default to compute);
:class:`DropColumns` records each column's type before dropping it (so the reverse re-adds the
same type) and can drop triggers in the same transaction (a trigger function that names a
dropped column would fail every later ``UPDATE``).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step, column_attributes

__all__ = ["AddColumns", "DropColumns"]


class AddColumns(Step):
    """``ALTER TABLE t ADD COLUMN IF NOT EXISTS c type, ...`` (nullable: no rewrite)."""

    def __init__(self, name: str, table: str, columns: dict[str, str]) -> None:
        self.name, self.table, self.columns = name, table, dict(columns)

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        present = await column_attributes(ctx.conn, self.table, list(self.columns))
        return set(present) == set(self.columns)

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {c} {kind}" for c, kind in self.columns.items())

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(f"ALTER TABLE {self.table} {adds}")

        await ctx.locked(self.name, self.table, "ACCESS EXCLUSIVE", go)


class DropColumns(Step):
    """Drop ``columns`` (and ``triggers``) of ``table`` in one transaction; records their
    types first (``detail["types"]``)."""

    def __init__(
        self, name: str, table: str, columns: list[str], triggers: tuple[str, ...] = ()
    ) -> None:
        self.name, self.table, self.columns, self.triggers = name, table, columns, triggers

    def captured(self, detail: dict[str, Any]) -> bool:
        return "types" in detail

    async def capture(self, ctx: DdlContext) -> dict[str, Any]:
        present = await column_attributes(ctx.conn, self.table, self.columns)
        return {"types": {c: kind for c, (_nn, kind) in present.items()}}

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        if await column_attributes(ctx.conn, self.table, self.columns):
            return False
        left = await ctx.conn.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) "
            "AND tgname = ANY($2::text[])",
            self.table,
            list(self.triggers),
        )
        return not left

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        statements = [f"DROP TRIGGER IF EXISTS {t} ON {self.table}" for t in self.triggers]
        drops = ", ".join(f"DROP COLUMN IF EXISTS {c}" for c in self.columns)
        statements.append(f"ALTER TABLE {self.table} {drops}")
        block = "DO $dw$ BEGIN\n" + "".join(f"  {s};\n" for s in statements) + "END $dw$"

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(block)

        await ctx.locked(self.name, self.table, "ACCESS EXCLUSIVE", go)
