"""SQL of the backfiller, from a spec and a mode's :class:`~dualwrite.backfill.modes.Strategy`.

Every statement uses asyncpg's ``$n`` placeholders and is prepared once per connection. Batches
are claimed on the primary key with ``FOR UPDATE SKIP LOCKED`` (so a live writer is never
overwritten by what the backfiller read: it waits for the batch, or the batch skips its row),
and written with ONE set-based ``UPDATE ... FROM unnest(...)`` per batch that also upserts the
checkpoint (same statement, same transaction):

>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> spec = MigrationSpec("t_pii", "t", (FieldSpec("email", blind_index="email"),))
>>> sql = BackfillSql(spec, "encrypt", "uuid", current_version="v2")
>>> print(sql.claim(first=False))  # doctest: +NORMALIZE_WHITESPACE
SELECT "id", "email", "email_encrypted" IS NULL, "email_bidx" IS NULL FROM "t"
WHERE "id" > CAST($1 AS text)::uuid AND (("email" IS NOT NULL AND ("email_encrypted" IS NULL OR
"email_bidx" IS NULL))) ORDER BY "id" LIMIT $2 FOR UPDATE SKIP LOCKED
>>> sql.layout
[('email_c', 'bytea'), ('email_b', 'bytea')]

Identifiers come from a validated spec (lower-case SQL identifiers), never from user input,
and are emitted quoted.
"""

from __future__ import annotations

from dualwrite.backfill.modes import Strategy, strategy
from dualwrite.phases import BackfillMode
from dualwrite.schema import sql as schema_sql
from dualwrite.spec import MigrationSpec
from dualwrite.spec import quote_ident as _q
from dualwrite.state.checkpoints import batch_upsert_sql

__all__ = ["BackfillSql"]


class BackfillSql:
    """The prepared statements of one (spec, mode): claim, write+checkpoint, count, phase read.

    ``pk_type`` is the SQL type of the primary key (``format_type`` of the column, e.g. ``uuid``
    or ``bigint``); the keyset position travels as text and is cast back.
    """

    def __init__(
        self, spec: MigrationSpec, mode: BackfillMode | str, pk_type: str, *, current_version: str
    ) -> None:
        self.spec = spec
        self.strategy: Strategy = strategy(mode)
        self.mode = self.strategy.mode
        self.pk_type = pk_type
        self.predicate = self.strategy.predicate(spec, current_version)
        self.layout = [
            (f"{f.name}_{o.suffix}", o.sql_type)
            for f in spec.fields
            for o in self.strategy.writes(f)
        ]
        """Every unnest column after the primary key, in the order the UPDATE expects them."""

    def claim(self, *, first: bool) -> str:
        """``$1`` = last key (text; absent when ``first``), ``$2`` (or ``$1``) = batch size."""
        pk = _q(self.spec.primary_key)
        cols = ", ".join(c for f in self.spec.fields for c in self.strategy.reads(f))
        after = "" if first else f"{pk} > CAST($1 AS text)::{self.pk_type} AND "
        limit = "$1" if first else "$2"
        return (
            f"SELECT {pk}, {cols} FROM {self.spec.sql_table} WHERE {after}{self.predicate} "
            f"ORDER BY {pk} LIMIT {limit} FOR UPDATE SKIP LOCKED"
        )

    def write(self) -> str:
        """One UPDATE for the whole batch plus the checkpoint upsert, in one statement.

        ``$1`` = primary keys, then one array per :attr:`layout` entry, then the checkpoint
        values (see :func:`dualwrite.state.checkpoints.batch_upsert_sql`). Returns the number of
        rows updated.
        """
        pk = _q(self.spec.primary_key)
        arrays = [f"${i + 2}::{typ}[]" for i, (_, typ) in enumerate(self.layout)]
        aliases = ", ".join(["id", *(alias for alias, _ in self.layout)])
        sets = ", ".join(
            f"{_q(o.column)} = "
            + o.assign.format(v=f"v.{f.name}_{o.suffix}", t=f"t.{_q(o.column)}")
            for f in self.spec.fields
            for o in self.strategy.writes(f)
        )
        return (
            f"WITH w AS (UPDATE {self.spec.sql_table} AS t SET {sets} FROM "
            f"unnest($1::{self.pk_type}[], {', '.join(arrays)}) AS v({aliases}) "
            f"WHERE t.{pk} = v.id RETURNING 1), "
            f"c AS ({batch_upsert_sql(len(self.layout) + 2)}) SELECT count(*) FROM w"
        )

    def count_remaining(self) -> str:
        return f"SELECT count(*) FROM {self.spec.sql_table} WHERE {self.predicate}"

    def count_rows(self) -> str:
        return f"SELECT count(*) FROM {self.spec.table}"

    @staticmethod
    def read_state() -> str:
        """``$1`` = migration name -> (phase, backfill_control)."""
        return "SELECT phase, backfill_control FROM dualwrite_migrations WHERE name = $1"

    @staticmethod
    def keep_ciphertext() -> str:
        return schema_sql.keep_ciphertext_sql()

    @property
    def needs_keep_ciphertext(self) -> bool:
        """Decrypt and purge change plaintext on purpose: the stale guard must keep ciphertext."""
        return self.strategy.keeps_ciphertext
