"""Guard triggers: install (function, then trigger created-or-replaced and enabled ALWAYS in
one statement) or drop (trigger under the short lock timeout, then its function)."""

from __future__ import annotations

from typing import Any

import asyncpg

from dualwrite.schema import sql
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec

__all__ = ["DropTrigger", "InstallTrigger"]

_FUNCTION_EXISTS = "SELECT to_regprocedure($1 || '()') IS NOT NULL"


class InstallTrigger(Step):
    """``function_ddl`` (no table lock), then :func:`~dualwrite.schema.sql.install_trigger_ddl`
    under SHARE ROW EXCLUSIVE (readers are never blocked by it; writers briefly)."""

    def __init__(
        self, name: str, spec: MigrationSpec, trigger: str, function: str, function_ddl: str
    ) -> None:
        self.name, self.spec, self.trigger = name, spec, trigger
        self.function, self.function_ddl = function, function_ddl

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        enabled = await ctx.conn.fetchval(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgname = $1 "
            "AND tgrelid = to_regclass($2) AND NOT tgisinternal",
            self.trigger,
            self.spec.table,
        )
        return enabled == "A" and bool(await ctx.conn.fetchval(_FUNCTION_EXISTS, self.function))

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        await ctx.conn.execute(self.function_ddl)
        statement = sql.install_trigger_ddl(self.spec, self.trigger, self.function)

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(statement)

        await ctx.locked(self.name, self.spec.table, "SHARE ROW EXCLUSIVE", go)


class DropTrigger(Step):
    """``DROP TRIGGER IF EXISTS`` (ACCESS EXCLUSIVE, brief), then ``DROP FUNCTION IF EXISTS``."""

    def __init__(self, name: str, spec: MigrationSpec, trigger: str, function: str) -> None:
        self.name, self.spec, self.trigger, self.function = name, spec, trigger, function

    async def _present(self, ctx: DdlContext) -> bool:
        return bool(
            await ctx.conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgname = $1 AND tgrelid = to_regclass($2)",
                self.trigger,
                self.spec.table,
            )
        )

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        if await self._present(ctx):
            return False
        return not await ctx.conn.fetchval(_FUNCTION_EXISTS, self.function)

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(f"DROP TRIGGER IF EXISTS {self.trigger} ON {self.spec.table}")

        if await self._present(ctx):
            await ctx.locked(self.name, self.spec.table, "ACCESS EXCLUSIVE", go)
        await ctx.conn.execute(f"DROP FUNCTION IF EXISTS {self.function}()")
