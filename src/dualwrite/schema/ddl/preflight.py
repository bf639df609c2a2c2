"""Before fencing: what still depends on the plaintext columns (finalize refuses while any does).

Views and materialized views, generated columns, row-level security policies, publication
column lists and row filters (PostgreSQL 15+ records them as dependencies), indexes,
constraints (``CHECK``, ``UNIQUE``, foreign keys in either direction), column triggers and
extended statistics. ``DROP COLUMN`` would either fail on them (views, generated columns) or
drop them silently (indexes, constraints, policies, publication lists), and either is a
surprise in the middle of a finalize. The contract revision names the indexes it drops
itself (``drop_indexes``); those are not reported.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dualwrite.errors import DependenciesRemainError
from dualwrite.schema import sql
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec

__all__ = ["Preflight", "plaintext_dependencies"]

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


async def plaintext_dependencies(
    conn: asyncpg.Connection, spec: MigrationSpec, allowed_indexes: tuple[str, ...] = ()
) -> list[str]:
    """One description per object depending on a plaintext column of ``spec``, e.g.
    ``"view public.v (uses email)"``."""
    columns = list(spec.field_names)
    own = [sql.fence_name(spec), *(sql.not_null_check_name(spec, c) for c in columns)]
    allowed = [
        name
        for name in allowed_indexes
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
    ]
    rows = await conn.fetch(_DEPENDENTS_SQL, spec.table, columns, allowed, own)
    return [f"{r[0]} (uses {r[1]})" for r in rows if r[0]]


class Preflight(Step):
    """Refuses (:class:`DependenciesRemainError`, one line per dependency) while anything but
    the declared ``drop_indexes`` depends on the plaintext columns; changes nothing."""

    name = "preflight"

    def __init__(self, spec: MigrationSpec, drop_indexes: tuple[str, ...] = ()) -> None:
        self.spec, self.drop_indexes = spec, drop_indexes

    async def done(self, ctx: DdlContext, detail: dict[str, Any]) -> bool:
        return False  # checked on every run: a view can appear between two attempts

    async def start(self, ctx: DdlContext, detail: dict[str, Any]) -> None:
        found = await plaintext_dependencies(ctx.conn, self.spec, self.drop_indexes)
        if found:
            raise DependenciesRemainError(
                f"{len(found)} object(s) still depend on the plaintext columns of "
                f"{self.spec.table}; drop or change them (or list an index in the contract "
                "revision's drop_indexes), then finalize again:\n"
                + "\n".join(f"  - {what}" for what in found),
                found,
            )
