"""Add or drop columns: one ``ALTER TABLE`` under the short lock timeout, each with its reverse.

:class:`AddColumns` adds nullable columns (no table rewrite, no default to compute), each with
the type given: ``bytea`` for what the expand adds, the field's registered type
(:attr:`~dualwrite.spec.FieldSpec.type`) for the plaintext columns the uncontract re-adds.
:class:`DropColumns` can drop triggers in the same transaction (a trigger function that names a
dropped column would fail every later ``UPDATE``); :class:`AddColumns` can install one in the
same transaction, and run further statements there (re-added plaintext columns are never
writable without the stale guard and the fence: see :func:`~dualwrite.schema.ddl.plans.uncontract`).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step, column_attributes
from dualwrite.schema.ddl.trigger import InstallTrigger
from dualwrite.spec import MigrationSpec
from dualwrite.spec import quote_ident as _q

__all__ = ["AddColumns", "DropColumns"]


class AddColumns(Step):
    """``ALTER TABLE t ADD COLUMN IF NOT EXISTS c type, ...`` (nullable: no rewrite)."""

    def __init__(
        self,
        name: str,
        spec: MigrationSpec,
        columns: dict[str, str],
        guard: InstallTrigger | None = None,
        then: tuple[str, ...] = (),
    ) -> None:
        self.name, self.spec, self.columns, self.guard = name, spec, dict(columns), guard
        self.then = then

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        present = await column_attributes(ctx.conn, self.spec.sql_table, list(self.columns))
        if set(present) != set(self.columns):
            return False
        return self.guard is None or await self.guard.done(ctx, detail)

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        adds = ", ".join(
            f"ADD COLUMN IF NOT EXISTS {_q(c)} {kind}" for c, kind in self.columns.items()
        )
        guard = self.guard
        if guard is not None:  # the function first (no table lock; its body binds late)
            await ctx.conn.execute(guard.function_ddl)

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(f"ALTER TABLE {self.spec.sql_table} {adds}")
            if guard is not None:
                await conn.execute(guard.trigger_ddl())
            for statement in self.then:
                await conn.execute(statement)

        await ctx.locked(self.name, self.spec.sql_table, "ACCESS EXCLUSIVE", go)


class DropColumns(Step):
    """Drop ``columns`` (and ``triggers``) of the table in one transaction."""

    def __init__(
        self, name: str, spec: MigrationSpec, columns: list[str], triggers: tuple[str, ...] = ()
    ) -> None:
        self.name, self.spec, self.columns, self.triggers = name, spec, columns, triggers

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        if await column_attributes(ctx.conn, self.spec.sql_table, self.columns):
            return False
        left = await ctx.conn.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) "
            "AND tgname = ANY($2::text[])",
            self.spec.sql_table,
            list(self.triggers),
        )
        return not left

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        table = self.spec.sql_table
        statements = [f"DROP TRIGGER IF EXISTS {_q(t)} ON {table}" for t in self.triggers]
        drops = ", ".join(f"DROP COLUMN IF EXISTS {_q(c)}" for c in self.columns)
        statements.append(f"ALTER TABLE {table} {drops}")
        block = "DO $dw$ BEGIN\n" + "".join(f"  {s};\n" for s in statements) + "END $dw$"

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(block)

        await ctx.locked(self.name, table, "ACCESS EXCLUSIVE", go)
