"""SQL of ``unique`` fields: the UNIQUE index on ``(scope, <name>_uidx)`` and its checks (pure).

A UNIQUE constraint on a plaintext column stops enforcing at ``contract`` (plaintext is NULL
from then on), so the expand builds its replacement before any value is encrypted: a UNIQUE
index on ``(<scope_column>, <name>_uidx)`` (``<name>_uidx`` alone without a scope), built
``CONCURRENTLY`` while the column is still empty. The writers fill ``_uidx`` with an HMAC of the
exact value (:meth:`dualwrite.crypto.BlindIndex.unique`), so once plaintext is gone a duplicate
insert fails with the same ``unique_violation`` as before.

Before the build, :func:`duplicates_sql` lists the primary keys of rows that already share a
value (a field declared ``unique`` without a constraint in the live table may hold some); the
expand refuses with that list rather than build an index the backfill would then violate.

>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> spec = MigrationSpec("p_pii", "clinic.patients", (FieldSpec("email", unique=True),),
...                      scope_column="clinic_id")
>>> print(unique_index_ddl(spec)[0])
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "ux_patients_email_uidx" ON "clinic"."patients" \
("clinic_id", "email_uidx")
"""

from __future__ import annotations

from dualwrite.schema.sql import derived_name
from dualwrite.spec import FieldSpec, MigrationSpec
from dualwrite.spec import quote_ident as _q

__all__ = [
    "UNIQUE_INDEX_STATE_SQL",
    "describe_duplicates",
    "duplicates_sql",
    "unique_index_columns",
    "unique_index_ddl",
    "unique_index_name",
]


def unique_index_name(spec: MigrationSpec, f: FieldSpec) -> str:
    """``ux_<table>_<name>_uidx`` (unquoted, within 63 bytes, unique per schema)."""
    assert f.uidx_column is not None
    return derived_name("ux", spec.table_name, f.uidx_column)


def unique_index_columns(spec: MigrationSpec, f: FieldSpec) -> tuple[str, ...]:
    """The columns of the UNIQUE index replacing the plaintext constraint."""
    assert f.uidx_column is not None
    return (spec.scope_column, f.uidx_column) if spec.scope_column else (f.uidx_column,)


def unique_index_ddl(spec: MigrationSpec, *, concurrently: bool = True) -> list[str]:
    how = "CONCURRENTLY " if concurrently else ""
    return [
        f"CREATE UNIQUE INDEX {how}IF NOT EXISTS {_q(unique_index_name(spec, f))} ON "
        f"{spec.sql_table} ({', '.join(_q(c) for c in unique_index_columns(spec, f))})"
        for f in spec.unique_fields
    ]


def duplicates_sql(spec: MigrationSpec, f: FieldSpec, limit: int = 20) -> str:
    """Groups of rows sharing ``f``'s plaintext value (within the scope): ``(count, keys)``,
    the first keys of each group in key order, the largest groups first."""
    pk, col = _q(spec.primary_key), _q(f.plaintext_column)
    group = ", ".join(_q(c) for c in (spec.scope_column, f.plaintext_column) if c)
    return (
        f"SELECT count(*), (array_agg({pk}::text ORDER BY {pk}))[1:5] FROM {spec.sql_table} "
        f"WHERE {col} IS NOT NULL GROUP BY {group} HAVING count(*) > 1 "
        f"ORDER BY count(*) DESC LIMIT {int(limit)}"
    )


UNIQUE_INDEX_STATE_SQL = (
    "SELECT i.indisvalid AND i.indisunique FROM pg_index i JOIN pg_class c ON "
    "c.oid = i.indexrelid WHERE c.relname = :name AND i.indrelid = to_regclass(:t)"
)
"""``:name`` index, ``:t`` table -> whether it is a valid UNIQUE index; no row when missing."""


def describe_duplicates(field: str, groups: list[tuple[int, list[str]]]) -> str:
    """One line naming the duplicate groups by primary key (never a value).

    >>> describe_duplicates("email", [(2, ["3", "7"]), (3, ["4", "5", "9"])])
    'field email is declared unique but 2 groups of rows share a value (primary keys 3, 7; \
4, 5, 9): resolve them, then run the expand again'
    """
    shown = "; ".join(", ".join(keys) + (", ..." if n > len(keys) else "") for n, keys in groups)
    return (
        f"field {field} is declared unique but {len(groups)} groups of rows share a value "
        f"(primary keys {shown}): resolve them, then run the expand again"
    )
