"""Indexes built and dropped ``CONCURRENTLY`` under the watchdog, each with its reverse.

:class:`CreateIndex` drops an INVALID leftover of a failed or cancelled build first (``IF NOT
EXISTS`` would keep it forever) and checks the result is valid; :class:`DropIndex` records the
index definition before dropping it, so the reverse rebuilds the same index. An index lives in
its table's schema: both name it there (:func:`~dualwrite.schema.sql.in_schema`), and the step
is named after the bare index name (``index:ix_patients_email_bidx``).
"""

from __future__ import annotations

from typing import Any

from dualwrite.errors import SchemaStepError
from dualwrite.schema import sql
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec

__all__ = ["CreateIndex", "DropIndex", "index_state"]


async def index_state(ctx: DdlContext, qualified: str) -> str | None:
    """``"valid"``, ``"invalid"`` or ``None`` (no such index)."""
    valid = await ctx.conn.fetchval(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)", qualified
    )
    return None if valid is None else ("valid" if valid else "invalid")


class CreateIndex(Step):
    """``statement`` is a ``CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS index ...`` of an
    index on ``spec``'s table."""

    def __init__(self, spec: MigrationSpec, index: str, statement: str) -> None:
        self.name, self.statement = f"index:{index}", statement
        self.qualified = sql.in_schema(spec, index)

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return await index_state(ctx, self.qualified) == "valid"

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        if await index_state(ctx, self.qualified) == "invalid":
            ctx.say(f"{self.name}: dropping the INVALID leftover of an earlier build")
            await ctx.concurrently(self.name, f"DROP INDEX CONCURRENTLY IF EXISTS {self.qualified}")
        await ctx.concurrently(self.name, self.statement)
        if await index_state(ctx, self.qualified) != "valid":
            raise SchemaStepError(
                f"{self.name}: the concurrent build left the index invalid; run again"
            )


class DropIndex(Step):
    """``DROP INDEX CONCURRENTLY IF EXISTS``; ``detail["definition"]`` keeps how to rebuild it."""

    def __init__(self, spec: MigrationSpec, index: str) -> None:
        self.name, self.qualified = f"drop_index:{index}", sql.in_schema(spec, index)

    def captured(self, detail: dict[str, Any]) -> bool:
        return "definition" in detail

    async def capture(self, ctx: DdlContext) -> dict[str, Any]:
        definition = await ctx.conn.fetchval(
            "SELECT pg_get_indexdef(to_regclass($1))", self.qualified
        )
        return {"definition": definition}

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return await index_state(ctx, self.qualified) is None

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        await ctx.concurrently(self.name, f"DROP INDEX CONCURRENTLY IF EXISTS {self.qualified}")
