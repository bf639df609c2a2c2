"""The migration's state row: registered (phase ``plaintext``) as the last step of the expand,
removed as the last step of its reverse (with the journal, so a new expand records afresh)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.journal import JOURNAL_TABLE
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec

__all__ = ["Register", "Unregister"]

_EXISTS = "SELECT count(*) FROM dualwrite_migrations WHERE name = $1"


class Register(Step):
    """``INSERT ... ON CONFLICT DO NOTHING``: phase ``plaintext``; ``schema_notes`` keeps the
    ``NOT NULL`` columns (``not_null`` reads them from the expand's journal)."""

    name = "register"

    def __init__(
        self, spec: MigrationSpec, not_null: Callable[[DdlContext], Awaitable[list[str]]]
    ) -> None:
        self.spec, self.not_null = spec, not_null

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return bool(await ctx.conn.fetchval(_EXISTS, self.spec.name))

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        notes = {"not_null": await self.not_null(ctx)}
        await ctx.conn.execute(
            "INSERT INTO dualwrite_migrations (name, table_name, spec, schema_notes) "
            "VALUES ($1, $2, CAST($3 AS jsonb), CAST($4 AS jsonb)) ON CONFLICT (name) DO NOTHING",
            self.spec.name,
            self.spec.table,
            json.dumps(self.spec.to_json()),
            json.dumps(notes),
        )


class Unregister(Step):
    """Delete the state row and every journal row of the migration."""

    name = "unregister"

    def __init__(self, spec: MigrationSpec) -> None:
        self.spec = spec

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return False

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        async with ctx.conn.transaction():
            await ctx.conn.execute(
                "DELETE FROM dualwrite_migrations WHERE name = $1", self.spec.name
            )
            await ctx.conn.execute(
                f"DELETE FROM {JOURNAL_TABLE} WHERE migration = $1 AND operation <> 'unexpand'",
                self.spec.name,
            )
