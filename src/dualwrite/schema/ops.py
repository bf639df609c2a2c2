"""Alembic helpers: the state tables, expand and contract for any table, each with its reverse.

A user's own revisions are a few lines::

    from dualwrite.schema import ops as schema_ops
    from myapp.schema import PATIENTS_PII          # a MigrationSpec

    def upgrade() -> None:
        schema_ops.expand(PATIENTS_PII)

    def downgrade() -> None:
        schema_ops.unexpand(PATIENTS_PII)

The SQL itself comes from :mod:`dualwrite.schema.sql` (pure string builders), so tests and the
store can reuse it. Index builds run ``CONCURRENTLY`` in an autocommit block; every statement runs
under the ``lock_timeout``/``statement_timeout`` the migration environment set.
"""

from __future__ import annotations

import json

from alembic import op
from alembic.util import CommandError
from sqlalchemy import text

from dualwrite.errors import DualwriteError
from dualwrite.schema import sql, state_revisions, unique
from dualwrite.spec import MigrationSpec


class ContractRefusedError(DualwriteError, CommandError):
    """The contract revision refused to run (Alembic's CLI prints it as one ``FAILED:`` line;
    the revision changed nothing)."""


def create_state_tables() -> None:
    """Create the dualwrite state tables at their latest revision (revision 0002 of the
    reference project). Later dualwrite versions bring existing state tables up to date with
    ``dualwrite db upgrade`` (:mod:`dualwrite.schema.state_revisions`)."""
    for statement in state_revisions.create_statements():
        op.execute(statement)


def drop_state_tables() -> None:
    """Reverse of :func:`create_state_tables`."""
    for statement in state_revisions.drop_statements():
        op.execute(statement)


def expand(spec: MigrationSpec, *, concurrently: bool = True) -> None:
    """Add ciphertext/blind-index/unique-HMAC columns, the stale-ciphertext trigger, indexes
    (the UNIQUE ``_uidx`` indexes of ``unique`` fields too, after listing any duplicates), and
    register ``spec`` in phase ``plaintext``."""
    bind = op.get_bind()
    not_null = [
        row[0]
        for row in bind.execute(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                "AND attnum > 0 AND NOT attisdropped AND attnotnull AND attname = ANY(:cols)"
            ),
            {"t": spec.sql_table, "cols": list(spec.field_names)},
        )
    ]
    for f in spec.unique_fields:  # an index the backfill would violate is never built
        groups = [
            (int(n), list(keys)) for n, keys in bind.execute(text(unique.duplicates_sql(spec, f)))
        ]
        if groups:
            raise DualwriteError(unique.describe_duplicates(f.name, groups))
    for statement in sql.expand_columns_ddl(spec):
        op.execute(statement)
    for statement in sql.stale_guard_ddl(spec):
        op.execute(statement)
    for f in spec.searchable:
        assert f.bidx_column is not None
        name = sql.blind_index_name(spec, f.bidx_column)
        found = bind.execute(text(sql.INVALID_INDEX_SQL), {"name": name, "t": spec.sql_table})
        if found.first() is not None:
            where = f'"{spec.schema}".' if spec.schema else ""
            how = "CONCURRENTLY " if concurrently else ""
            _build_indexes([f'DROP INDEX {how}{where}"{name}"'], concurrently)
    for f in spec.unique_fields:
        name = unique.unique_index_name(spec, f)
        found = bind.execute(text(sql.INVALID_INDEX_SQL), {"name": name, "t": spec.sql_table})
        if found.first() is not None:
            drop = unique.drop_unique_index_ddl(spec, f, concurrently=concurrently)
            _build_indexes([drop], concurrently)
    _build_indexes(sql.blind_index_ddl(spec, concurrently=concurrently), concurrently)
    _build_indexes(unique.unique_index_ddl(spec, concurrently=concurrently), concurrently)
    bind.execute(
        text(
            "INSERT INTO dualwrite_migrations (name, table_name, spec, schema_notes) "
            "VALUES (:name, :table, CAST(:spec AS jsonb), CAST(:notes AS jsonb)) "
            "ON CONFLICT (name) DO NOTHING"
        ),
        {
            "name": spec.name,
            "table": spec.table,
            "spec": json.dumps(spec.to_json()),
            "notes": json.dumps({"not_null": not_null}),
        },
    )


def unexpand(spec: MigrationSpec) -> None:
    """Reverse of :func:`expand`. Refuses unless the migration is back in ``plaintext``."""
    bind = op.get_bind()
    row = bind.execute(
        text("SELECT phase, schema_notes FROM dualwrite_migrations WHERE name = :n"),
        {"n": spec.name},
    ).first()
    phase = row[0] if row else None
    not_null = list((row[1] or {}).get("not_null", [])) if row else []
    if phase not in (None, "plaintext"):
        raise DualwriteError(
            f"migration {spec.name} is in phase {phase}: move it back to plaintext "
            "before removing the expand schema"
        )
    for statement in sql.unexpand_ddl(spec, restore_not_null=not_null):
        op.execute(statement)
    bind.execute(text("DELETE FROM dualwrite_migrations WHERE name = :n"), {"n": spec.name})


def contract(spec: MigrationSpec) -> None:
    """Drop the plaintext columns. Refuses unless the migration is in ``contract`` (or later)
    and every plaintext value is already purged (NULL)."""
    bind = op.get_bind()
    phase = bind.execute(
        text("SELECT phase FROM dualwrite_migrations WHERE name = :n"), {"n": spec.name}
    ).scalar()
    if phase not in ("contract", "finalized"):
        raise ContractRefusedError(
            f"migration {spec.name} is in phase {phase}: the contract revision runs only "
            "from contract, through `dualwrite finalize`"
        )
    remaining = bind.execute(text(sql.count_plaintext_remaining_sql(spec))).scalar()
    if remaining:
        raise ContractRefusedError(
            f"{remaining} rows of {spec.table} still hold plaintext: run "
            "`dualwrite backfill --mode purge` first"
        )
    for f in spec.unique_fields:  # the plaintext constraints go with the columns
        name = unique.unique_index_name(spec, f)
        state = bind.execute(
            text(unique.UNIQUE_INDEX_STATE_SQL), {"name": name, "t": spec.sql_table}
        )
        if state.scalar() is not True:
            raise ContractRefusedError(
                f"the UNIQUE index {name} of field {f.name} is missing or not valid: run the "
                "expand again before the contract"
            )
    for statement in sql.contract_ddl(spec):
        op.execute(statement)


def uncontract(spec: MigrationSpec) -> None:
    """Reverse of :func:`contract`: re-add the plaintext columns (nullable) and the trigger.

    The values come back with ``dualwrite backfill --mode decrypt``.
    """
    for statement in sql.uncontract_ddl(spec):
        op.execute(statement)


def _build_indexes(statements: list[str], concurrently: bool) -> None:
    if not statements:
        return
    if concurrently:
        with op.get_context().autocommit_block():
            for statement in statements:
                op.execute(statement)
    else:
        for statement in statements:
            op.execute(statement)
