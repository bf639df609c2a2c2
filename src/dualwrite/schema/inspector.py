"""The inspector: what the live table looks like and how far its conversion got (reads only).

Every function takes an open :class:`~sqlalchemy.ext.asyncio.AsyncConnection` and reads; the
caller owns the transaction.

>>> async with engine.connect() as conn:                                # doctest: +SKIP
...     cov = await coverage(conn, CLIENTS_PII)
>>> cov.percent                                                         # doctest: +SKIP
100.0
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.phases import TriggerView
from dualwrite.schema import sql as schema_sql
from dualwrite.schema import unique
from dualwrite.spec import MigrationSpec

__all__ = [
    "Coverage",
    "column_types",
    "coverage",
    "guard_trigger",
    "plaintext_columns_present",
    "schema_expanded",
    "trigger_enabled",
]

_PRESENT_COLUMNS = (
    "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attnum > 0 "
    "AND NOT attisdropped AND attname = ANY(:cols)"
)


@dataclass(frozen=True, slots=True)
class Coverage:
    total_rows: int
    rows_missing_ciphertext: int
    rows_ciphertext_without_plaintext: int
    rows_with_plaintext: int

    @property
    def percent(self) -> float:
        if self.total_rows == 0:
            return 100.0
        return 100.0 * (self.total_rows - self.rows_missing_ciphertext) / self.total_rows


async def _count_present(conn: AsyncConnection, spec: MigrationSpec, columns: list[str]) -> int:
    found = await conn.execute(text(_PRESENT_COLUMNS), {"t": spec.sql_table, "cols": columns})
    return int(found.scalar_one())


async def plaintext_columns_present(conn: AsyncConnection, spec: MigrationSpec) -> bool:
    return await _count_present(conn, spec, list(spec.field_names)) == len(spec.fields)


async def trigger_enabled(conn: AsyncConnection, table: str, trigger: str) -> str | None:
    """``tgenabled`` of ``trigger`` on ``table`` (``A`` = always), ``None`` when it is missing."""
    found = await conn.execute(text(schema_sql.TRIGGER_ENABLED_SQL), {"g": trigger, "t": table})
    value = found.scalar()
    return None if value is None else str(value)


async def guard_trigger(conn: AsyncConnection, spec: MigrationSpec) -> TriggerView:
    """The guard trigger the table needs now and its ``tgenabled``: the stale-ciphertext trigger
    while the plaintext columns exist, the key guard after the contract dropped them."""
    plaintext = await plaintext_columns_present(conn, spec)
    name = schema_sql.STALE_GUARD_TRIGGER if plaintext else schema_sql.KEY_GUARD_TRIGGER
    return TriggerView(spec.table, name, await trigger_enabled(conn, spec.sql_table, name))


async def schema_expanded(conn: AsyncConnection, spec: MigrationSpec) -> bool:
    """Every ciphertext (blind-index, unique-HMAC) column exists, every ``unique`` field's
    UNIQUE index is there and valid, and so is the guard trigger, enabled ALWAYS: the
    stale-ciphertext trigger while the plaintext columns exist, the key guard after the contract
    dropped them."""
    wanted = [c for f in spec.fields for c in schema_sql.added_columns(f)]
    if await _count_present(conn, spec, wanted) != len(wanted):
        return False
    for f in spec.unique_fields:  # must enforce before contract stops the plaintext constraint
        params = {"name": unique.unique_index_name(spec, f), "t": spec.sql_table}
        found = await conn.execute(text(unique.UNIQUE_INDEX_STATE_SQL), params)
        if found.scalar() is not True:
            return False
    return (await guard_trigger(conn, spec)).enabled == "A"


async def missing_blind_indexes(conn: AsyncConnection, spec: MigrationSpec) -> tuple[str, ...]:
    """The blind-index indexes (``ix_<table>_<field>_bidx``) that are missing or INVALID: a
    backfill run with ``--defer-indexes`` that has not finished (see
    :mod:`dualwrite.backfill.indexes`)."""
    out = []
    for f in spec.searchable:
        assert f.bidx_column is not None
        name = schema_sql.blind_index_name(spec, f.bidx_column)
        found = await conn.execute(text(_INDEX_VALID_SQL), {"name": name, "t": spec.sql_table})
        if found.scalar() is not True:
            out.append(name)
    return tuple(out)


_INDEX_VALID_SQL = (
    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE c.relname = :name AND i.indrelid = to_regclass(:t)"
)


async def column_types(conn: AsyncConnection, table: str) -> dict[str, str]:
    """``format_type`` of every live column of ``table`` (e.g. ``{"id": "uuid"}``)."""
    rows = await conn.execute(
        text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE "
            "a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"t": table},
    )
    return {str(r[0]): str(r[1]) for r in rows}


async def coverage(conn: AsyncConnection, spec: MigrationSpec) -> Coverage:
    """One scan counting total, uncovered, plaintext-incomplete and not-yet-purged rows."""
    missing = schema_sql.missing_ciphertext_predicate(spec)
    incomplete = schema_sql.plaintext_incomplete_predicate(spec)
    remaining = schema_sql.plaintext_remaining_predicate(spec)
    if not await plaintext_columns_present(conn, spec):
        total = (await conn.execute(text(f"SELECT count(*) FROM {spec.sql_table}"))).scalar_one()
        return Coverage(int(total), 0, 0, 0)
    row = (
        await conn.execute(
            text(
                "SELECT count(*) AS total, "
                f"count(*) FILTER (WHERE {missing}) AS missing, "
                f"count(*) FILTER (WHERE {incomplete}) AS incomplete, "
                f"count(*) FILTER (WHERE {remaining}) AS remaining "
                f"FROM {spec.sql_table}"
            )
        )
    ).one()
    return Coverage(int(row.total), int(row.missing), int(row.incomplete), int(row.remaining))
