"""Read the live table a ``dualwrite revision`` is for, and decide its spec (reads only).

Everything the expand and contract revisions must know is read here, once, and frozen into the
revision files: the table's schema and logical name (a partition's parent's name), the single
primary key and its type, each field's type (refused when it cannot be encrypted exactly) and
``NOT NULL``, and the names of the indexes and constraints on the fields, which the contract
drops before the plaintext columns (recording their definitions) and its downgrade puts back.
A UNIQUE constraint on a field that is not declared ``:unique`` is refused: it would stop
enforcing at ``contract``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.errors import ConfigError, UnsupportedTypeError
from dualwrite.schema.revision.options import FieldOption
from dualwrite.spec import FieldSpec, MigrationSpec, quote_ident

__all__ = ["LiveTable", "build_spec", "read_table"]

_KEY_TYPES = ("uuid", "smallint", "integer", "bigint", "text", "character varying")

_TABLE = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind::text, c.relispartition,
       (SELECT pn.nspname || '.' || pc.relname FROM pg_inherits i
          JOIN pg_class pc ON pc.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhrelid = c.oid LIMIT 1)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:t)
"""
_COLUMNS = """
SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute
WHERE attrelid = :oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""
_KEY = """
SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
 AND a.attnum = ANY(i.indkey) WHERE i.indrelid = :oid AND i.indisprimary
"""
_INDEXES = """
SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisunique, con.conname,
       pg_get_constraintdef(con.oid),
       ARRAY(SELECT a.attname FROM unnest(i.indkey) k JOIN pg_attribute a
             ON a.attrelid = i.indrelid AND a.attnum = k)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
WHERE i.indrelid = :oid AND NOT i.indisprimary
"""
_CHECKS = """
SELECT conname, pg_get_constraintdef(oid), ARRAY(SELECT a.attname FROM unnest(conkey) k
       JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k)
FROM pg_constraint WHERE conrelid = :oid AND contype = 'c'
"""


@dataclass(slots=True)
class LiveTable:
    schema: str
    name: str
    logical: str  # the associated-data name: bare in public, schema.table otherwise
    key: str
    key_type: str
    columns: dict[str, tuple[str, bool]]  # name -> (format_type, NOT NULL)
    indexes: list[str] = field(default_factory=list)  # the contract drops them, its reverse
    constraints: list[str] = field(default_factory=list)  # rebuilds them (online)
    uniques: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _logical(qualified: str) -> str:
    schema, _, name = qualified.partition(".")
    return name if schema == "public" else qualified


async def read_table(
    conn: AsyncConnection, schema: str | None, table: str, fields: list[str]
) -> LiveTable:
    """Read ``[schema.]table`` (one-line errors for a missing table, a composite or missing
    key, a missing field)."""
    wanted = f"{quote_ident(schema)}.{quote_ident(table)}" if schema else quote_ident(table)
    row = (await conn.execute(text(_TABLE), {"t": wanted})).first()
    shown = f"{schema}.{table}" if schema else table
    if row is None:
        raise ConfigError(f"table {shown} does not exist")
    oid, nsp, rel, kind, is_partition, parent = row
    if kind not in ("r", "p"):
        raise ConfigError(f"{shown} is not a table")
    columns = {
        str(r[0]): (str(r[1]), bool(r[2])) for r in await conn.execute(text(_COLUMNS), {"oid": oid})
    }
    keys = [str(r[0]) for r in await conn.execute(text(_KEY), {"oid": oid})]
    if not keys:
        raise ConfigError(f"table {shown} has no primary key (dualwrite binds ciphertexts to it)")
    if len(keys) > 1:
        raise ConfigError(
            f"table {shown} has a composite primary key ({', '.join(keys)}): dualwrite needs "
            "a single-column key"
        )
    key_type = columns[keys[0]][0]
    if not key_type.startswith(_KEY_TYPES):
        raise ConfigError(
            f"primary key {keys[0]} of {shown} is {key_type}: supported keys are uuid, "
            "integers and text"
        )
    for name in fields:
        if name not in columns:
            raise ConfigError(f"table {shown} has no column {name}")
        if name == keys[0]:
            raise ConfigError(f"{name} is the primary key of {shown}: it cannot be encrypted")
    live = LiveTable(
        nsp, rel, _logical(parent if is_partition and parent else f"{nsp}.{rel}"), keys[0],
        key_type, columns,
    )  # fmt: skip
    chosen = set(fields)
    for name, _indexdef, unique, conname, _condef, cols in await conn.execute(
        text(_INDEXES), {"oid": oid}
    ):
        on = [c for c in cols if c in chosen]
        if not on:
            continue
        if conname:
            live.constraints.append(str(conname))
        else:
            live.indexes.append(str(name))
        if unique:
            for c in on:
                live.uniques.setdefault(c, []).append((str(conname or name), list(cols)))
        live.notes.append(f"{conname or name} on ({', '.join(cols)})")
    for conname, condef, cols in await conn.execute(text(_CHECKS), {"oid": oid}):
        if any(c in chosen for c in cols):
            live.constraints.append(str(conname))
            live.notes.append(f"{conname}: {condef}")
    return live


def build_spec(
    name: str, live: LiveTable, options: list[FieldOption], scope: str | None
) -> MigrationSpec:
    """The spec frozen into the revisions (one-line errors for what cannot be migrated)."""
    if scope is not None and scope not in live.columns:
        raise ConfigError(f"table {live.schema}.{live.name} has no scope column {scope}")
    fields: list[FieldSpec] = []
    for opt in options:
        sql_type = live.columns[opt.name][0]
        try:
            vt = FieldSpec(opt.name, type=sql_type).value_type
        except (UnsupportedTypeError, ValueError) as exc:
            raise ConfigError(f"field {opt.name}: {exc}") from None
        kind = (opt.search or vt.default_search) if opt.search is not None else None
        _check_unique(live, opt, scope)
        try:
            fields.append(FieldSpec(opt.name, kind, sql_type, opt.unique))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    table = live.name if live.schema == "public" else f"{live.schema}.{live.name}"
    try:
        return MigrationSpec(
            name=name, table=table, fields=tuple(fields), primary_key=live.key,
            scope_column=scope, aad_table=live.logical, key_type=live.key_type,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_unique(live: LiveTable, opt: FieldOption, scope: str | None) -> None:
    found = live.uniques.get(opt.name, [])
    if found and not opt.unique:
        raise ConfigError(
            f"field {opt.name} has a UNIQUE constraint or index ({found[0][0]}), which stops "
            f"enforcing at contract: declare it --field {opt.name}:unique"
        )
    replacement = sorted(c for c in (scope, opt.name) if c)
    for conname, cols in found:
        if sorted(cols) != replacement:
            raise ConfigError(
                f"field {opt.name}: the UNIQUE {conname} is on ({', '.join(cols)}) but its "
                f"replacement would be on ({', '.join(replacement)}): choose --scope to match"
            )


def describe(spec: MigrationSpec, live: LiveTable) -> dict[str, Any]:
    """What was read, for the revision's docstring."""
    return {
        "key": f"{live.key} {live.key_type}",
        "not_null": [f.name for f in spec.fields if live.columns[f.name][1]],
        "replaced": live.notes,
    }
