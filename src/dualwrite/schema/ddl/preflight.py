"""Checks that change nothing: before the expand builds a UNIQUE index, before the contract fences.

**Expand** (:class:`UniqueValues`): a field declared ``unique`` must not already hold duplicate
values (within the scope), or the UNIQUE index on its ``_uidx`` could never be built; the
expand refuses before its first change, naming the rows by primary key
(:func:`~dualwrite.schema.unique.describe_duplicates`).

**Contract** (:class:`Preflight`): what still depends on the plaintext columns (finalize
refuses while any does), and every ``unique`` field's UNIQUE index must be valid (it is what
enforces the constraint once the plaintext is gone).

Views and materialized views, generated columns, row-level security policies, publication
column lists and row filters (PostgreSQL 15+ records them as dependencies), indexes,
constraints (``CHECK``, ``UNIQUE``, foreign keys in either direction), column triggers and
extended statistics. ``DROP COLUMN`` would either fail on them (views, generated columns) or
drop them silently (indexes, constraints, policies, publication lists), and either is a
surprise in the middle of a finalize. The contract revision names the indexes it drops
itself (``drop_indexes``, ``drop_constraints``); those are not reported.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dualwrite.errors import DependenciesRemainError, SchemaStepError
from dualwrite.schema import sql, unique
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec

__all__ = ["Preflight", "UniqueValues", "plaintext_dependencies", "unique_indexes_valid"]

_DEPENDENTS_SQL = """
WITH cols AS (
    SELECT attnum, attname FROM pg_attribute
    WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
      AND attname = ANY($2::text[])
)
SELECT CASE
         WHEN d.classid = 'pg_rewrite'::regclass THEN (
           SELECT CASE c.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END
                  || c.oid::regclass::text
           FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
         WHEN d.classid = 'pg_class'::regclass AND d.objid = to_regclass($1) THEN
           'generated ' || pg_describe_object(d.classid, d.objid, d.objsubid)
         WHEN d.classid = 'pg_attrdef'::regclass THEN (
           SELECT CASE WHEN a.attgenerated <> '' THEN 'generated column ' ELSE 'default of column '
                  END || a.attname || ' of table ' || ad.adrelid::regclass::text
           FROM pg_attrdef ad
           JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
           WHERE ad.oid = d.objid)
         ELSE pg_describe_object(d.classid, d.objid, d.objsubid)
       END AS what,
       string_agg(DISTINCT cols.attname, ', ' ORDER BY cols.attname) AS columns
FROM pg_depend d JOIN cols ON cols.attnum = d.refobjsubid
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass($1)
  AND d.deptype IN ('n', 'a')
  AND NOT (d.classid = 'pg_class'::regclass
           AND d.objid IN (SELECT to_regclass(x) FROM unnest($3::text[]) x))
  AND NOT (d.classid = 'pg_constraint'::regclass AND d.objid IN (
        SELECT oid FROM pg_constraint WHERE conname = ANY($4::text[]) OR contype = 'n'))
GROUP BY 1 ORDER BY 1
"""


_UNIQUE_VALID = (
    "SELECT i.indisvalid AND i.indisunique FROM pg_index i WHERE i.indexrelid = to_regclass($1)"
)


async def plaintext_dependencies(
    conn: asyncpg.Connection,
    spec: MigrationSpec,
    allowed_indexes: tuple[str, ...] = (),
    allowed_constraints: tuple[str, ...] = (),
) -> list[str]:
    """One description per object depending on a plaintext column of ``spec``, e.g.
    ``"view public.v (uses email)"``."""
    columns = list(spec.field_names)
    own = [sql.fence_name(spec), *(sql.not_null_check_name(spec, c) for c in columns)]
    own += allowed_constraints
    allowed = [
        qualified
        for qualified in (sql.in_schema(spec, name) for name in allowed_indexes)
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified)
    ]
    rows = await conn.fetch(_DEPENDENTS_SQL, spec.sql_table, columns, allowed, own)
    return [f"{r[0]} (uses {r[1]})" for r in rows if r[0]]


async def unique_indexes_valid(conn: asyncpg.Connection, spec: MigrationSpec) -> list[str]:
    """The UNIQUE ``_uidx`` indexes of ``spec`` that are missing or not valid."""
    bad = []
    for f in spec.unique_fields:
        name = unique.unique_index_name(spec, f)
        state = await conn.fetchval(_UNIQUE_VALID, sql.in_schema(spec, name))
        if state is not True:
            bad.append(name)
    return bad


class UniqueValues(Step):
    """Refuses while a ``unique`` field holds duplicate values; done once every UNIQUE
    ``_uidx`` index is valid (from then on it enforces)."""

    name = "unique_values"

    def __init__(self, spec: MigrationSpec) -> None:
        self.spec = spec

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return not await unique_indexes_valid(ctx.conn, self.spec)

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        for f in self.spec.unique_fields:
            found = await ctx.conn.fetch(unique.duplicates_sql(self.spec, f))
            if found:
                groups = [(int(r[0]), [str(k) for k in r[1]]) for r in found]
                raise SchemaStepError(unique.describe_duplicates(f.name, groups))


class Preflight(Step):
    """Refuses (:class:`DependenciesRemainError`, one line per dependency) while anything but
    the declared ``drop_indexes``/``drop_constraints`` depends on the plaintext columns, or a
    ``unique`` field's index is not valid; changes nothing."""

    name = "preflight"

    def __init__(
        self,
        spec: MigrationSpec,
        drop_indexes: tuple[str, ...] = (),
        drop_constraints: tuple[str, ...] = (),
    ) -> None:
        self.spec, self.drop_indexes, self.drop_constraints = spec, drop_indexes, drop_constraints

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return False  # checked on every run: a view can appear between two attempts

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        for name in await unique_indexes_valid(ctx.conn, self.spec):
            raise SchemaStepError(
                f"the UNIQUE index {name} is missing or not valid: run the expand again "
                "before the contract (it enforces the constraint once the plaintext is gone)"
            )
        found = await plaintext_dependencies(
            ctx.conn, self.spec, self.drop_indexes, self.drop_constraints
        )
        if found:
            raise DependenciesRemainError(
                f"{len(found)} object(s) still depend on the plaintext columns of "
                f"{self.spec.table}; drop or change them (or list them in the contract "
                "revision's drop_indexes / drop_constraints), then finalize again:\n"
                + "\n".join(f"  - {what}" for what in found),
                found,
            )
