"""The fence: ``CHECK (<every plaintext> IS NULL) NOT VALID``, then ``VALIDATE``.

From the commit of the ``NOT VALID`` constraint on, a write that stores plaintext (a legacy
writer, a forgotten job) fails with a check violation instead of being dropped silently with
the columns; ``VALIDATE`` then proves, under SHARE UPDATE EXCLUSIVE (reads and writes go on),
that no committed row holds plaintext. A transaction that wrote plaintext before the fence
either commits first (``VALIDATE`` finds the row: the fence is rolled back, finalize refuses,
the plaintext is kept) or is still open (the ``NOT VALID`` step waits for its lock, retrying).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dualwrite.errors import SchemaStepError
from dualwrite.schema import sql
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step, column_attributes
from dualwrite.spec import MigrationSpec
from dualwrite.spec import quote_ident as _q

__all__ = ["Fence", "drop_fence", "fence_state"]


async def fence_state(conn: asyncpg.Connection, spec: MigrationSpec) -> str | None:
    """``"validated"``, ``"not_valid"`` or ``None`` (no fence)."""
    valid = await conn.fetchval(
        "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
        spec.sql_table,
        sql.fence_name(spec),
    )
    return None if valid is None else ("validated" if valid else "not_valid")


class Fence(Step):
    name = "fence"

    def __init__(self, spec: MigrationSpec) -> None:
        self.spec = spec

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        present = await column_attributes(
            ctx.conn, self.spec.sql_table, list(self.spec.field_names)
        )
        if not present:
            return True  # the columns are gone (and the fence with them)
        return await fence_state(ctx.conn, self.spec) == "validated"

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        if await fence_state(ctx.conn, self.spec) is not None:
            return
        statement = sql.fence_ddl(self.spec)

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(statement)

        await ctx.locked("fence", self.spec.sql_table, "ACCESS EXCLUSIVE", go)

    async def complete(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        name, table = _q(sql.fence_name(self.spec)), self.spec.sql_table

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")

        try:
            await ctx.locked("validate fence", table, "SHARE UPDATE EXCLUSIVE", go)
        except asyncpg.exceptions.CheckViolationError:
            rows = await ctx.conn.fetchval(sql.count_plaintext_remaining_sql(self.spec))
            await self.rollback(ctx, detail)
            raise SchemaStepError(
                f"{rows} rows of {self.spec.table} still hold plaintext (written after the "
                "purge, or never purged): nothing was dropped and the fence was removed; run "
                "`dualwrite backfill --mode purge`, then finalize again"
            ) from None

    async def rollback(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        await drop_fence(ctx, self.spec)


async def drop_fence(ctx: DdlContext, spec: MigrationSpec) -> bool:
    """Remove the fence if present (a move back from ``contract`` writes plaintext again)."""
    if await fence_state(ctx.conn, spec) is None:
        return False
    name = _q(sql.fence_name(spec))

    async def go(conn: asyncpg.Connection) -> None:
        await conn.execute(f"ALTER TABLE {spec.sql_table} DROP CONSTRAINT IF EXISTS {name}")

    await ctx.locked("drop fence", spec.sql_table, "ACCESS EXCLUSIVE", go)
    return True
