"""The steps of each schema operation, in order, and their reverses (alembic style: every
forward operation has one).

============  ====================================================================
``expand``     add ciphertext/blind-index columns; drop ``NOT NULL`` on the plaintext
               (recorded first); install the stale guard; build the blind indexes
               concurrently; register the migration
``unexpand``   drop the guards; drop the added columns; restore ``NOT NULL`` (check,
               validate, set, drop check); unregister
``contract``   preflight (dependencies); drop the declared plaintext indexes
               concurrently (definitions recorded); fence and validate; install the
               key guard; drop the plaintext columns with the stale trigger (types
               recorded); drop the stale guard function
``uncontract`` re-add the plaintext columns (recorded types, nullable); install the stale
               guard; drop the key guard; rebuild the dropped indexes concurrently
============  ====================================================================
"""

from __future__ import annotations

import json

from dualwrite.schema import sql
from dualwrite.schema.ddl.columns import AddColumns, DropColumns
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.fence import Fence
from dualwrite.schema.ddl.index import CreateIndex, DropIndex
from dualwrite.schema.ddl.journal import Journal
from dualwrite.schema.ddl.not_null import DropNotNull, RestoreNotNull
from dualwrite.schema.ddl.preflight import Preflight
from dualwrite.schema.ddl.registration import Register, Unregister
from dualwrite.schema.ddl.step import Step
from dualwrite.schema.ddl.trigger import DropTrigger, InstallTrigger
from dualwrite.spec import MigrationSpec

__all__ = ["contract", "expand", "recorded_indexes", "uncontract", "unexpand"]


def _guard(spec: MigrationSpec, kind: str) -> InstallTrigger:
    """The stale guard (``kind="stale"``) or the key guard (``"key"``), enabled ALWAYS."""
    if kind == "stale":
        fn, ddl = sql.stale_guard_function(spec), sql.stale_guard_function_ddl(spec)
        return InstallTrigger("stale_guard", spec, sql.STALE_GUARD_TRIGGER, fn, ddl)
    fn, ddl = sql.key_guard_function(spec), sql.key_guard_function_ddl(spec)
    return InstallTrigger("key_guard", spec, sql.KEY_GUARD_TRIGGER, fn, ddl)


def _added_columns(spec: MigrationSpec) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in spec.fields:
        out[f.ciphertext_column] = "bytea"
        if f.bidx_column:
            out[f.bidx_column] = "bytea"
    return out


async def expand_not_null(ctx: DdlContext, spec: MigrationSpec) -> list[str]:
    """The ``NOT NULL`` columns the expand recorded (its journal, else the state row's notes
    written by an older dualwrite)."""
    detail = await Journal(ctx.conn, spec.name, "expand").detail("drop_not_null")
    if detail is not None and "not_null" in detail:
        return list(detail["not_null"])
    if not await ctx.conn.fetchval("SELECT to_regclass('dualwrite_migrations') IS NOT NULL"):
        return []
    notes = await ctx.conn.fetchval(
        "SELECT schema_notes FROM dualwrite_migrations WHERE name = $1", spec.name
    )
    if isinstance(notes, str):
        notes = json.loads(notes)
    return list((notes or {}).get("not_null", []))


def expand(spec: MigrationSpec) -> list[Step]:
    steps: list[Step] = [
        AddColumns("add_columns", spec.table, _added_columns(spec)),
        DropNotNull(spec),
        _guard(spec, "stale"),
    ]
    statements = sql.blind_index_ddl(spec, concurrently=True)
    for f, statement in zip(spec.searchable, statements, strict=True):
        assert f.bidx_column is not None
        steps.append(CreateIndex(sql.blind_index_name(spec, f.bidx_column), statement))
    steps.append(Register(spec, lambda ctx: expand_not_null(ctx, spec)))
    return steps


def unexpand(spec: MigrationSpec) -> list[Step]:
    return [
        DropTrigger(
            "drop_stale_guard", spec, sql.STALE_GUARD_TRIGGER, sql.stale_guard_function(spec)
        ),
        DropTrigger("drop_key_guard", spec, sql.KEY_GUARD_TRIGGER, sql.key_guard_function(spec)),
        DropColumns("drop_columns", spec.table, list(_added_columns(spec))),
        RestoreNotNull(spec, lambda ctx: expand_not_null(ctx, spec)),
        Unregister(spec),
    ]


def contract(spec: MigrationSpec, drop_indexes: tuple[str, ...] = ()) -> list[Step]:
    return [
        Preflight(spec, drop_indexes),
        *(DropIndex(index) for index in drop_indexes),
        Fence(spec),
        _guard(spec, "key"),
        DropColumns(
            "drop_plaintext", spec.table, list(spec.field_names), (sql.STALE_GUARD_TRIGGER,)
        ),
        DropTrigger(
            "drop_stale_guard_function",
            spec,
            sql.STALE_GUARD_TRIGGER,
            sql.stale_guard_function(spec),
        ),
    ]


async def recorded_indexes(ctx: DdlContext, spec: MigrationSpec) -> dict[str, str]:
    """``index -> definition`` of the indexes the contract dropped (from its journal)."""
    entries = await Journal(ctx.conn, spec.name, "contract").entries()
    return {
        step.split(":", 1)[1]: str(detail["definition"])
        for step, (_status, detail) in entries.items()
        if step.startswith("drop_index:") and detail.get("definition")
    }


async def uncontract(ctx: DdlContext, spec: MigrationSpec) -> list[Step]:
    """Built from what the contract recorded: the plaintext types, the dropped indexes."""
    recorded = await Journal(ctx.conn, spec.name, "contract").detail("drop_plaintext")
    types = dict((recorded or {}).get("types", {}))
    columns = {name: str(types.get(name, "text")) for name in spec.field_names}
    steps: list[Step] = [
        AddColumns("add_plaintext", spec.table, columns),
        _guard(spec, "stale"),
        DropTrigger("drop_key_guard", spec, sql.KEY_GUARD_TRIGGER, sql.key_guard_function(spec)),
    ]
    for index, definition in sorted((await recorded_indexes(ctx, spec)).items()):
        steps.append(CreateIndex(index, sql.concurrent_index_ddl(definition)))
    return steps
