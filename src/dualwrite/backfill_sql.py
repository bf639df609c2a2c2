"""SQL of the backfiller, built from a :class:`~dualwrite.spec.MigrationSpec` (pure).

Every statement uses asyncpg's ``$n`` placeholders and is prepared once per connection. Batches
are claimed on the primary key with ``FOR UPDATE SKIP LOCKED`` (so a live writer is never
overwritten by what the backfiller read: it waits for the batch, or the batch skips its row),
and written with ONE set-based ``UPDATE ... FROM unnest(...)`` per batch that also upserts the
checkpoint (same statement, same transaction):

>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> spec = MigrationSpec("t_pii", "t", (FieldSpec("email", blind_index="email"),))
>>> sql = BackfillSql(spec, "encrypt", "uuid", current_version="v2")
>>> print(sql.claim(first=False))  # doctest: +NORMALIZE_WHITESPACE
SELECT id, email, email_encrypted IS NULL, email_bidx IS NULL FROM t
WHERE id > CAST($1 AS text)::uuid AND ((email IS NOT NULL AND (email_encrypted IS NULL OR
email_bidx IS NULL))) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
>>> print(rekey_predicate(spec, "v2"))
((email_encrypted IS NOT NULL AND substring(email_encrypted from 1 for 3) <> '\\x76323a'::bytea))

Identifiers come from a validated spec (lower-case SQL identifiers), never from user input.
"""

from __future__ import annotations

from dualwrite import schema_sql
from dualwrite.crypto import is_version_label
from dualwrite.phases import BackfillMode
from dualwrite.spec import FieldSpec, MigrationSpec


def version_prefix(version: str) -> bytes:
    """The ciphertext prefix of a key version: ``"v2"`` -> ``b"v2:"``."""
    if not is_version_label(version):
        raise ValueError("version must be a key version label like 'v2'")
    return version.encode("ascii") + b":"


def _bytea_literal(raw: bytes) -> str:
    return "'\\x" + raw.hex() + "'::bytea"


def rekey_predicate(spec: MigrationSpec, current_version: str) -> str:
    """Rows holding a ciphertext that is not under ``current_version``."""
    prefix = version_prefix(current_version)
    parts = [
        f"({f.ciphertext_column} IS NOT NULL AND substring({f.ciphertext_column} from 1 for "
        f"{len(prefix)}) <> {_bytea_literal(prefix)})"
        for f in spec.fields
    ]
    return "(" + " OR ".join(parts) + ")"


def mode_predicate(spec: MigrationSpec, mode: BackfillMode | str, current_version: str) -> str:
    """Which rows a mode still has to convert (the claim filter and the "remaining" count)."""
    mode = BackfillMode.parse(mode)
    if mode is BackfillMode.ENCRYPT:
        return schema_sql.missing_ciphertext_predicate(spec)
    if mode is BackfillMode.DECRYPT:
        return schema_sql.plaintext_incomplete_predicate(spec)
    if mode is BackfillMode.REKEY:
        return rekey_predicate(spec, current_version)
    return schema_sql.plaintext_remaining_predicate(spec)


def _is_null(column: str | None) -> str:
    return f"{column} IS NULL" if column else "NULL::boolean"


def select_columns(spec: MigrationSpec, mode: BackfillMode) -> list[str]:
    """The claim's columns after the primary key, per field (see :mod:`dualwrite.backfill_rows`).

    - encrypt: plaintext, ciphertext missing?, blind index missing?
    - decrypt: ciphertext, plaintext missing?
    - rekey:   ciphertext
    - purge:   plaintext, ciphertext, blind index missing?
    """
    cols: list[str] = []
    for f in spec.fields:
        if mode is BackfillMode.ENCRYPT:
            cols += [f.plaintext_column, _is_null(f.ciphertext_column), _is_null(f.bidx_column)]
        elif mode is BackfillMode.DECRYPT:
            cols += [f.ciphertext_column, _is_null(f.plaintext_column)]
        elif mode is BackfillMode.REKEY:
            cols += [f.ciphertext_column]
        else:
            cols += [f.plaintext_column, f.ciphertext_column, _is_null(f.bidx_column)]
    return cols


def _set_clauses(f: FieldSpec, mode: BackfillMode) -> list[str]:
    """SET items for one field; ``v.<name>_c`` / ``_b`` / ``_p`` / ``_n`` are the unnest columns.

    A NULL array element leaves the stored value as it is (COALESCE), so one statement serves
    rows that need different fields filled.
    """
    ct, bx, pt = f.ciphertext_column, f.bidx_column, f.plaintext_column
    if mode is BackfillMode.ENCRYPT:
        out = [f"{ct} = COALESCE(v.{f.name}_c, t.{ct})"]
        if bx:
            out.append(f"{bx} = COALESCE(v.{f.name}_b, t.{bx})")
        return out
    if mode is BackfillMode.DECRYPT:
        return [f"{pt} = COALESCE(t.{pt}, v.{f.name}_p)"]
    if mode is BackfillMode.REKEY:
        return [f"{ct} = COALESCE(v.{f.name}_c, t.{ct})"]
    out = [f"{ct} = COALESCE(v.{f.name}_c, t.{ct})"]
    if bx:
        out.append(f"{bx} = COALESCE(v.{f.name}_b, t.{bx})")
    out.append(f"{pt} = CASE WHEN v.{f.name}_n THEN NULL ELSE t.{pt} END")
    return out


def _unnest_columns(f: FieldSpec, mode: BackfillMode) -> list[tuple[str, str]]:
    """(alias, array type) of the per-field unnest inputs, in parameter order."""
    if mode is BackfillMode.ENCRYPT:
        cols = [(f"{f.name}_c", "bytea")]
        if f.bidx_column:
            cols.append((f"{f.name}_b", "bytea"))
        return cols
    if mode is BackfillMode.DECRYPT:
        return [(f"{f.name}_p", "text")]
    if mode is BackfillMode.REKEY:
        return [(f"{f.name}_c", "bytea")]
    cols = [(f"{f.name}_c", "bytea")]
    if f.bidx_column:
        cols.append((f"{f.name}_b", "bytea"))
    cols.append((f"{f.name}_n", "boolean"))
    return cols


def array_layout(spec: MigrationSpec, mode: BackfillMode | str) -> list[tuple[str, str]]:
    """Every unnest column after the primary key, in the order the UPDATE expects its arrays."""
    mode = BackfillMode.parse(mode)
    return [c for f in spec.fields for c in _unnest_columns(f, mode)]


CHECKPOINT_UPSERT = (
    "INSERT INTO dualwrite_checkpoints (migration, mode, shard, run_id, last_key, rows_done, "
    "rows_failed, started_at, updated_at, finished_at) VALUES ({p}, clock_timestamp(), NULL) "
    "ON CONFLICT (migration, mode, shard) DO UPDATE SET run_id = excluded.run_id, last_key = "
    "excluded.last_key, rows_done = dualwrite_checkpoints.rows_done + excluded.rows_done, "
    "rows_failed = dualwrite_checkpoints.rows_failed + excluded.rows_failed, started_at = "
    "excluded.started_at, updated_at = excluded.updated_at, finished_at = NULL"
)
"""The checkpoint half of a batch's write: counts are ADDED (deltas), so two batches of one
worker can run their UPDATEs at the same time on two connections; the checkpoint row's lock
makes the later batch wait for the earlier one's commit, so ``last_key`` only moves forward."""


class BackfillSql:
    """The prepared statements of one (spec, mode): claim, write+checkpoint, count, phase read.

    ``pk_type`` is the SQL type of the primary key (``format_type`` of the column, e.g. ``uuid``
    or ``bigint``); the keyset position travels as text and is cast back.
    """

    def __init__(
        self, spec: MigrationSpec, mode: BackfillMode | str, pk_type: str, *, current_version: str
    ) -> None:
        self.spec = spec
        self.mode = BackfillMode.parse(mode)
        self.pk_type = pk_type
        self.predicate = mode_predicate(spec, self.mode, current_version)
        self.layout = array_layout(spec, self.mode)

    def claim(self, *, first: bool) -> str:
        """``$1`` = last key (text; absent when ``first``), ``$2`` (or ``$1``) = batch size."""
        pk, cols = self.spec.primary_key, ", ".join(select_columns(self.spec, self.mode))
        after = "" if first else f"{pk} > CAST($1 AS text)::{self.pk_type} AND "
        limit = "$1" if first else "$2"
        return (
            f"SELECT {pk}, {cols} FROM {self.spec.table} WHERE {after}{self.predicate} "
            f"ORDER BY {pk} LIMIT {limit} FOR UPDATE SKIP LOCKED"
        )

    def write(self) -> str:
        """One UPDATE for the whole batch plus the checkpoint upsert, in one statement.

        ``$1`` = primary keys, then one array per :meth:`array_layout` entry, then the
        checkpoint values (migration, mode, shard, run_id, last_key, rows_done, rows_failed,
        started_at). Returns the number of rows updated.
        """
        pk, n = self.spec.primary_key, len(self.layout)
        arrays = [f"${i + 2}::{typ}[]" for i, (_, typ) in enumerate(self.layout)]
        aliases = ", ".join(["id", *(alias for alias, _ in self.layout)])
        sets = ", ".join(c for f in self.spec.fields for c in _set_clauses(f, self.mode))
        first_cp = n + 2
        cp = ", ".join(
            f"${first_cp + i}" + cast
            for i, cast in enumerate(
                ["::text", "::text", "::int", "::text", "::text", "::bigint", "::bigint",
                 "::timestamptz"]
            )
        )  # fmt: skip
        return (
            f"WITH w AS (UPDATE {self.spec.table} AS t SET {sets} FROM "
            f"unnest($1::{self.pk_type}[], {', '.join(arrays)}) AS v({aliases}) "
            f"WHERE t.{pk} = v.id RETURNING 1), "
            f"c AS ({CHECKPOINT_UPSERT.format(p=cp)}) SELECT count(*) FROM w"
        )

    def count_remaining(self) -> str:
        return f"SELECT count(*) FROM {self.spec.table} WHERE {self.predicate}"

    @staticmethod
    def read_state() -> str:
        """``$1`` = migration name -> (phase, backfill_control)."""
        return "SELECT phase, backfill_control FROM dualwrite_migrations WHERE name = $1"

    @staticmethod
    def keep_ciphertext() -> str:
        return f"SELECT set_config('{schema_sql.KEEP_CIPHERTEXT_SETTING}', 'on', true)"

    @property
    def needs_keep_ciphertext(self) -> bool:
        """Decrypt and purge change plaintext on purpose: the stale guard must keep ciphertext."""
        return self.mode in (BackfillMode.DECRYPT, BackfillMode.PURGE)


def pk_type_sql() -> str:
    """``:t`` = table, ``:c`` = column -> the column's SQL type text (e.g. ``uuid``)."""
    return (
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = "
        "to_regclass(:t) AND a.attname = :c AND NOT a.attisdropped"
    )
