"""Table constraints on the plaintext columns: dropped by the contract, put back by its reverse.

A ``UNIQUE`` or ``CHECK`` constraint on a plaintext column would vanish silently with the
column; the contract revision names the ones it drops (``drop_constraints``), and
:class:`DropConstraint` records each definition first (``ALTER TABLE ... DROP CONSTRAINT`` is
a catalog change under a brief ACCESS EXCLUSIVE). :class:`RestoreConstraint` puts one back
without a long lock: a ``UNIQUE`` constraint as its index built ``CONCURRENTLY``, then
``ADD CONSTRAINT ... USING INDEX``; a ``CHECK`` or foreign key ``NOT VALID``, then
``VALIDATE`` (SHARE UPDATE EXCLUSIVE: reads and writes go on).

>>> using_index("uq", "uq", "UNIQUE (clinic_id, email) DEFERRABLE INITIALLY DEFERRED")
'ADD CONSTRAINT "uq" UNIQUE USING INDEX "uq" DEFERRABLE INITIALLY DEFERRED'
>>> not_valid("ck", "CHECK ((balance >= (0)::numeric)) NOT VALID")
'ADD CONSTRAINT "ck" CHECK ((balance >= (0)::numeric)) NOT VALID'
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from dualwrite.schema import sql
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.index import CreateIndex
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec
from dualwrite.spec import quote_ident as _q

__all__ = ["DropConstraint", "RestoreConstraint", "not_valid", "using_index"]

_DEFERRABLE = re.compile(r"(?:NOT )?DEFERRABLE(?: INITIALLY (?:DEFERRED|IMMEDIATE))?$")

_CONSTRAINT_SQL = """
SELECT pg_get_constraintdef(c.oid), c.contype::text, c.convalidated,
       CASE WHEN c.conindid <> 0 THEN pg_get_indexdef(c.conindid) END,
       (SELECT relname FROM pg_class WHERE oid = c.conindid)
FROM pg_constraint c WHERE c.conrelid = to_regclass($1) AND c.conname = $2
"""


def using_index(name: str, index: str, definition: str) -> str:
    """The clause re-adding ``UNIQUE`` constraint ``name`` on its rebuilt ``index``."""
    deferrable = _DEFERRABLE.search(definition)
    tail = f" {deferrable.group(0)}" if deferrable else ""
    return f"ADD CONSTRAINT {_q(name)} UNIQUE USING INDEX {_q(index)}{tail}"


def not_valid(name: str, definition: str) -> str:
    """The clause re-adding ``CHECK``/foreign-key constraint ``name`` without a scan."""
    return f"ADD CONSTRAINT {_q(name)} {definition.removesuffix(' NOT VALID')} NOT VALID"


async def _constraint(ctx: DdlContext, spec: MigrationSpec, name: str) -> asyncpg.Record | None:
    return await ctx.conn.fetchrow(_CONSTRAINT_SQL, spec.sql_table, name)


async def _alter(ctx: DdlContext, spec: MigrationSpec, what: str, clause: str, mode: str) -> None:
    async def go(conn: asyncpg.Connection) -> None:
        await conn.execute(f"ALTER TABLE {spec.sql_table} {clause}")

    await ctx.locked(what, spec.sql_table, mode, go)


class DropConstraint(Step):
    """``DROP CONSTRAINT``; ``detail`` keeps its definition, type and index definition."""

    def __init__(self, spec: MigrationSpec, constraint: str) -> None:
        self.name, self.spec, self.constraint = f"drop_constraint:{constraint}", spec, constraint

    def captured(self, detail: dict[str, Any]) -> bool:
        return "definition" in detail

    async def capture(self, ctx: DdlContext) -> dict[str, Any]:
        row = await _constraint(ctx, self.spec, self.constraint)
        if row is None:
            return {"definition": None}
        return {"definition": row[0], "type": row[1], "index": row[3], "index_name": row[4]}

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return await _constraint(ctx, self.spec, self.constraint) is None

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        clause = f"DROP CONSTRAINT IF EXISTS {_q(self.constraint)}"
        await _alter(ctx, self.spec, self.name, clause, "ACCESS EXCLUSIVE")


class RestoreConstraint(Step):
    """Re-add a constraint :class:`DropConstraint` recorded (``recorded`` is its detail)."""

    def __init__(self, spec: MigrationSpec, constraint: str, recorded: dict[str, Any]) -> None:
        self.name, self.spec, self.constraint = f"constraint:{constraint}", spec, constraint
        self.recorded = recorded

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        row = await _constraint(ctx, self.spec, self.constraint)
        return row is not None and bool(row[2])

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        if await _constraint(ctx, self.spec, self.constraint) is not None:
            return  # added NOT VALID by an earlier run: complete() validates it
        definition = str(self.recorded["definition"])
        kind, index = self.recorded.get("type"), self.recorded.get("index_name")
        if kind == "u" and index and self.recorded.get("index"):
            build = CreateIndex(self.spec, index, sql.concurrent_index_ddl(self.recorded["index"]))
            if not await build.done(ctx, detail):
                await build.start(ctx, detail)
            clause = using_index(self.constraint, index, definition)
        elif kind in ("c", "f"):
            clause = not_valid(self.constraint, definition)
        else:  # an exclusion constraint: built in place (the re-added columns are all NULL)
            clause = f"ADD CONSTRAINT {_q(self.constraint)} {definition}"
        await _alter(ctx, self.spec, self.name, clause, "ACCESS EXCLUSIVE")

    async def complete(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        row = await _constraint(ctx, self.spec, self.constraint)
        if row is not None and not row[2]:
            clause = f"VALIDATE CONSTRAINT {_q(self.constraint)}"
            await _alter(ctx, self.spec, self.name, clause, "SHARE UPDATE EXCLUSIVE")
