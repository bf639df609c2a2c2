"""Guard triggers: install (function, then trigger created-or-replaced and enabled ALWAYS in
one statement) or drop (trigger under the short lock timeout, then its function).

``function`` is the name as emitted (quoted, in the table's schema:
:func:`~dualwrite.schema.sql.stale_guard_function`); ``to_regprocedure`` resolves that form.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dualwrite.schema import sql
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec
from dualwrite.spec import quote_ident as _q

__all__ = ["DropTrigger", "InstallTrigger"]

_FUNCTION_EXISTS = "SELECT to_regprocedure($1 || '()') IS NOT NULL"
_FUNCTION_BODY = "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1 || '()')"


class InstallTrigger(Step):
    """``function_ddl`` (no table lock), then :func:`~dualwrite.schema.sql.install_trigger_ddl`
    under SHARE ROW EXCLUSIVE (readers are never blocked by it; writers briefly). Done when
    the trigger is enabled ALWAYS and the function's body is this one (a body an older
    dualwrite installed is replaced)."""

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
            self.spec.sql_table,
        )
        if enabled != "A":
            return False
        body = await ctx.conn.fetchval(_FUNCTION_BODY, self.function)
        return body is not None and body == self.function_ddl.split("$fn$")[1]

    def trigger_ddl(self) -> str:
        """The one statement creating (or replacing) the trigger enabled ALWAYS."""
        return sql.install_trigger_ddl(self.spec, self.trigger, self.function)

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        await ctx.conn.execute(self.function_ddl)
        statement = self.trigger_ddl()

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(statement)

        await ctx.locked(self.name, self.spec.sql_table, "SHARE ROW EXCLUSIVE", go)


class DropTrigger(Step):
    """``DROP TRIGGER IF EXISTS`` (ACCESS EXCLUSIVE, brief), then ``DROP FUNCTION IF EXISTS``."""

    def __init__(self, name: str, spec: MigrationSpec, trigger: str, function: str) -> None:
        self.name, self.spec, self.trigger, self.function = name, spec, trigger, function

    async def _present(self, ctx: DdlContext) -> bool:
        return bool(
            await ctx.conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgname = $1 AND tgrelid = to_regclass($2)",
                self.trigger,
                self.spec.sql_table,
            )
        )

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        if await self._present(ctx):
            return False
        return not await ctx.conn.fetchval(_FUNCTION_EXISTS, self.function)

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"DROP TRIGGER IF EXISTS {_q(self.trigger)} ON {self.spec.sql_table}"
            )

        if await self._present(ctx):
            await ctx.locked(self.name, self.spec.sql_table, "ACCESS EXCLUSIVE", go)
        await ctx.conn.execute(f"DROP FUNCTION IF EXISTS {self.function}()")
