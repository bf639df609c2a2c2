"""``NOT NULL`` on the plaintext columns: dropped by the expand, restored by its reverse.

:class:`DropNotNull` records which columns were ``NOT NULL`` *before* it changes anything (a
rerun after a kill must not record the already-relaxed state). :class:`RestoreNotNull` puts it
back without a full scan under ACCESS EXCLUSIVE: ``CHECK (c IS NOT NULL) NOT VALID`` (brief
lock), ``VALIDATE`` (a scan under SHARE UPDATE EXCLUSIVE, which blocks neither reads nor
writes), ``SET NOT NULL`` (brief: PostgreSQL uses the valid check instead of scanning), then
drops the check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from dualwrite.errors import SchemaStepError
from dualwrite.schema import sql
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step, column_attributes
from dualwrite.spec import MigrationSpec
from dualwrite.spec import quote_ident as _q

__all__ = ["DropNotNull", "RestoreNotNull"]


class DropNotNull(Step):
    """``ALTER COLUMN c DROP NOT NULL`` for every plaintext column (``contract`` writes NULL);
    ``detail["not_null"]`` lists those that had it."""

    name = "drop_not_null"

    def __init__(self, spec: MigrationSpec) -> None:
        self.spec = spec

    def captured(self, detail: dict[str, Any]) -> bool:
        return "not_null" in detail

    async def capture(self, ctx: DdlContext) -> dict[str, Any]:
        attrs = await column_attributes(ctx.conn, self.spec.sql_table, list(self.spec.field_names))
        return {"not_null": [c for c in self.spec.field_names if attrs.get(c, (False, ""))[0]]}

    async def _still_not_null(self, ctx: DdlContext) -> list[str]:
        attrs = await column_attributes(ctx.conn, self.spec.sql_table, list(self.spec.field_names))
        return [c for c, (not_null, _kind) in attrs.items() if not_null]

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return not await self._still_not_null(ctx)

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        columns = await self._still_not_null(ctx)
        drops = ", ".join(f"ALTER COLUMN {_q(c)} DROP NOT NULL" for c in columns)

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(f"ALTER TABLE {self.spec.sql_table} {drops}")

        await ctx.locked(self.name, self.spec.sql_table, "ACCESS EXCLUSIVE", go)


class RestoreNotNull(Step):
    """Restore ``NOT NULL`` on the columns ``source`` returns (what the expand recorded)."""

    name = "restore_not_null"

    def __init__(
        self, spec: MigrationSpec, source: Callable[[DdlContext], Awaitable[list[str]]]
    ) -> None:
        self.spec, self.source = spec, source

    def captured(self, detail: dict[str, Any]) -> bool:
        return "not_null" in detail

    async def capture(self, ctx: DdlContext) -> dict[str, Any]:
        wanted = await self.source(ctx)
        return {"not_null": [c for c in wanted if c in self.spec.field_names]}

    async def _checks_left(self, ctx: DdlContext, columns: list[str]) -> list[str]:
        names = [sql.not_null_check_name(self.spec, c) for c in columns]
        rows = await ctx.conn.fetch(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1) "
            "AND conname = ANY($2::text[])",
            self.spec.sql_table,
            names,
        )
        return [str(r[0]) for r in rows]

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        columns = list(detail.get("not_null", []))
        attrs = await column_attributes(ctx.conn, self.spec.sql_table, columns)
        if any(not attrs.get(c, (True, ""))[0] for c in columns):
            return False
        return not await self._checks_left(ctx, columns)

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        """The checks, ``NOT VALID`` (one brief ACCESS EXCLUSIVE)."""
        columns = list(detail.get("not_null", []))
        attrs = await column_attributes(ctx.conn, self.spec.sql_table, columns)
        existing = set(await self._checks_left(ctx, columns))
        adds = [
            f"ADD CONSTRAINT {_q(sql.not_null_check_name(self.spec, c))} CHECK ({_q(c)} IS NOT "
            "NULL) NOT VALID"
            for c in columns
            if c in attrs
            and not attrs[c][0]
            and sql.not_null_check_name(self.spec, c) not in existing
        ]
        if adds:
            await self._alter(ctx, ", ".join(adds), "ACCESS EXCLUSIVE")

    async def complete(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        """``VALIDATE`` each check, then ``SET NOT NULL`` and drop the checks."""
        columns = list(detail.get("not_null", []))
        table = self.spec.sql_table
        attrs = await column_attributes(ctx.conn, table, columns)
        pending = [c for c in columns if c in attrs and not attrs[c][0]]
        for c in pending:
            try:
                await self._alter(
                    ctx,
                    f"VALIDATE CONSTRAINT {_q(sql.not_null_check_name(self.spec, c))}",
                    "SHARE UPDATE EXCLUSIVE",
                )
            except asyncpg.exceptions.CheckViolationError:
                nulls = await ctx.conn.fetchval(
                    f"SELECT count(*) FROM {table} WHERE {_q(c)} IS NULL"
                )
                await self.rollback(ctx, detail)
                raise SchemaStepError(
                    f"{self.name}: {nulls} rows of {self.spec.table} have no {c}, so NOT NULL "
                    "cannot be restored; fill them in, then run the downgrade again"
                ) from None
        if pending:
            sets = ", ".join(f"ALTER COLUMN {_q(c)} SET NOT NULL" for c in pending)
            await self._alter(ctx, sets, "ACCESS EXCLUSIVE")
        left = await self._checks_left(ctx, columns)
        if left:
            drops = ", ".join(f"DROP CONSTRAINT IF EXISTS {_q(n)}" for n in left)
            await self._alter(ctx, drops, "ACCESS EXCLUSIVE")

    async def rollback(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        left = await self._checks_left(ctx, list(detail.get("not_null", [])))
        if left:
            drops = ", ".join(f"DROP CONSTRAINT IF EXISTS {_q(n)}" for n in left)
            await self._alter(ctx, drops, "ACCESS EXCLUSIVE")

    async def _alter(self, ctx: DdlContext, clauses: str, mode: str) -> None:
        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(f"ALTER TABLE {self.spec.sql_table} {clauses}")

        await ctx.locked(self.name, self.spec.sql_table, mode, go)
