"""The steps of each schema operation, in order, and their reverses (alembic style: every
forward operation has one).

============  ====================================================================
``expand``     refuse duplicate values of ``unique`` fields (before any change); add
               ciphertext/blind-index/unique-HMAC columns; drop ``NOT NULL`` on the
               plaintext (recorded first); install the stale guard; build the blind
               indexes and the UNIQUE ``_uidx`` indexes concurrently; register
``unexpand``   drop the guards; drop those indexes concurrently; drop the added columns;
               restore ``NOT NULL`` (check, validate, set, drop check); unregister
``contract``   preflight (dependencies, valid UNIQUE indexes); fence and validate (a
               refusal changes nothing else); drop the declared plaintext indexes
               concurrently and the declared constraints (definitions recorded); install
               the key guard; drop the plaintext columns with the stale trigger; drop the
               stale guard function
``uncontract`` re-add the plaintext columns (each with its field's registered type,
               nullable), the stale guard and the fence in one transaction; drop the key
               guard; rebuild the dropped indexes concurrently; re-add the dropped
               constraints
============  ====================================================================
"""

from __future__ import annotations

import json
from typing import Any

from dualwrite.schema import sql, unique
from dualwrite.schema.ddl.columns import AddColumns, DropColumns
from dualwrite.schema.ddl.constraint import DropConstraint, RestoreConstraint
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.fence import Fence
from dualwrite.schema.ddl.index import CreateIndex, DropIndex
from dualwrite.schema.ddl.journal import Journal
from dualwrite.schema.ddl.not_null import DropNotNull, RestoreNotNull
from dualwrite.schema.ddl.preflight import Preflight, UniqueValues
from dualwrite.schema.ddl.registration import Register, Unregister
from dualwrite.schema.ddl.step import Step
from dualwrite.schema.ddl.trigger import DropTrigger, InstallTrigger
from dualwrite.spec import MigrationSpec

__all__ = [
    "contract", "expand", "recorded_drops", "restore_drops", "uncontract", "unexpand",
]  # fmt: skip


def _guard(spec: MigrationSpec, kind: str) -> InstallTrigger:
    """The stale guard (``kind="stale"``) or the key guard (``"key"``), enabled ALWAYS."""
    if kind == "stale":
        fn, ddl = sql.stale_guard_function(spec), sql.stale_guard_function_ddl(spec)
        return InstallTrigger("stale_guard", spec, sql.STALE_GUARD_TRIGGER, fn, ddl)
    fn, ddl = sql.key_guard_function(spec), sql.key_guard_function_ddl(spec)
    return InstallTrigger("key_guard", spec, sql.KEY_GUARD_TRIGGER, fn, ddl)


def _added_columns(spec: MigrationSpec) -> dict[str, str]:
    return {c: "bytea" for f in spec.fields for c in sql.added_columns(f)}


def _indexes(spec: MigrationSpec) -> list[tuple[str, str]]:
    """``(index, CREATE ... CONCURRENTLY statement)`` of the blind and UNIQUE indexes."""
    names = [sql.blind_index_name(spec, str(f.bidx_column)) for f in spec.searchable]
    names += [unique.unique_index_name(spec, f) for f in spec.unique_fields]
    statements = sql.blind_index_ddl(spec) + unique.unique_index_ddl(spec)
    return list(zip(names, statements, strict=True))


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
    steps: list[Step] = [UniqueValues(spec)] if spec.unique_fields else []
    steps += [
        AddColumns("add_columns", spec, _added_columns(spec)),
        DropNotNull(spec),
        _guard(spec, "stale"),
    ]
    steps += [CreateIndex(spec, index, statement) for index, statement in _indexes(spec)]
    steps.append(Register(spec, lambda ctx: expand_not_null(ctx, spec)))
    return steps


def unexpand(spec: MigrationSpec) -> list[Step]:
    return [
        DropTrigger(
            "drop_stale_guard", spec, sql.STALE_GUARD_TRIGGER, sql.stale_guard_function(spec)
        ),
        DropTrigger("drop_key_guard", spec, sql.KEY_GUARD_TRIGGER, sql.key_guard_function(spec)),
        *(DropIndex(spec, index) for index, _ in _indexes(spec)),
        DropColumns("drop_columns", spec, list(_added_columns(spec))),
        RestoreNotNull(spec, lambda ctx: expand_not_null(ctx, spec)),
        Unregister(spec),
    ]


def contract(
    spec: MigrationSpec, drop_indexes: tuple[str, ...] = (), drop_constraints: tuple[str, ...] = ()
) -> list[Step]:
    return [
        Preflight(spec, drop_indexes, drop_constraints),
        Fence(spec),  # first: a refused fence leaves everything else as it was
        *(DropIndex(spec, index) for index in drop_indexes),
        *(DropConstraint(spec, name) for name in drop_constraints),
        _guard(spec, "key"),
        DropColumns("drop_plaintext", spec, list(spec.field_names), (sql.STALE_GUARD_TRIGGER,)),
        DropTrigger(
            "drop_stale_guard_function",
            spec,
            sql.STALE_GUARD_TRIGGER,
            sql.stale_guard_function(spec),
        ),
    ]


async def recorded_drops(ctx: DdlContext, spec: MigrationSpec, kind: str) -> dict[str, Any]:
    """What the contract recorded before dropping it, by name: ``kind="index"`` gives each
    index's definition, ``"constraint"`` each constraint's detail (from its journal)."""
    entries = await Journal(ctx.conn, spec.name, "contract").entries()
    prefix = f"drop_{kind}:"
    found: dict[str, Any] = {}
    for step, (_status, detail) in sorted(entries.items()):
        if step.startswith(prefix) and detail.get("definition"):
            name = step.removeprefix(prefix)
            found[name] = str(detail["definition"]) if kind == "index" else detail
    return found


async def uncontract(ctx: DdlContext, spec: MigrationSpec) -> list[Step]:
    """Built from the spec (each plaintext column's type) and what the contract recorded
    (the indexes and constraints it dropped).

    The plaintext columns come back in one transaction with the stale guard and the fence
    (``NOT VALID``: the new columns are all NULL). Instances that still observe ``finalized``
    neither read nor write plaintext, so until every instance observed ``contract`` a legacy
    plaintext write could not be seen by them (a read answering NULL, a clear they write
    leaving the legacy value behind): it fails loudly instead. ``contract -> read_switch``
    (guarded by ``fleet_observed_contract``) drops the fence.
    """
    return [
        AddColumns(
            "add_plaintext",
            spec,
            {f.plaintext_column: f.type for f in spec.fields},
            guard=_guard(spec, "stale"),
            then=(sql.fence_ddl(spec),),
        ),
        _guard(spec, "stale"),  # a no-op after the step above; an older journal's resume
        DropTrigger("drop_key_guard", spec, sql.KEY_GUARD_TRIGGER, sql.key_guard_function(spec)),
        *(await restore_drops(ctx, spec)),
    ]


async def restore_drops(ctx: DdlContext, spec: MigrationSpec) -> list[Step]:
    """Rebuild the indexes and constraints the contract dropped (also the reverse of an
    unfinished contract: a move back to ``read_switch`` writes plaintext again)."""
    steps: list[Step] = []
    for index, definition in (await recorded_drops(ctx, spec, "index")).items():
        steps.append(CreateIndex(spec, index, sql.concurrent_index_ddl(definition)))
    for name, detail in (await recorded_drops(ctx, spec, "constraint")).items():
        steps.append(RestoreConstraint(spec, name, detail))
    return steps
