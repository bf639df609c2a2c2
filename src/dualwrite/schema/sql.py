"""SQL text for the dualwrite schema, built from a :class:`~dualwrite.spec.MigrationSpec` (pure).

>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> spec = MigrationSpec("t_pii", "t", (FieldSpec("email", blind_index="email"),))
>>> for clause in expand_columns_ddl(spec)[0].split(", "):
...     print(clause)
ALTER TABLE t ADD COLUMN IF NOT EXISTS email_encrypted bytea
ADD COLUMN IF NOT EXISTS email_bidx bytea
>>> print(missing_ciphertext_predicate(spec))
((email IS NOT NULL AND (email_encrypted IS NULL OR email_bidx IS NULL)))

Identifiers come from a validated spec (lower-case SQL identifiers only), never from user input.
"""

from __future__ import annotations

from dualwrite.crypto import is_version_label
from dualwrite.spec import MigrationSpec

KEEP_CIPHERTEXT_SETTING = "dualwrite.keep_ciphertext"
"""Transaction-local setting the stale guard honours: framework writes that change plaintext on
purpose while the ciphertext stays right (purge, decrypt-restore) set it to ``on``::

    SELECT set_config('dualwrite.keep_ciphertext', 'on', true)
"""

NOTIFY_CHANNEL = "dualwrite_phase"

STALE_GUARD_TRIGGER = "dualwrite_stale_guard"
"""Name of the stale-ciphertext trigger the expand installs on the migrated table."""


def state_tables_ddl() -> list[str]:
    """The state tables: one row per migration, audit, heartbeats, checkpoints, results."""
    return [
        """
        CREATE TABLE dualwrite_migrations (
            name text PRIMARY KEY,
            table_name text NOT NULL,
            spec jsonb NOT NULL,
            phase text NOT NULL DEFAULT 'plaintext' CHECK (phase IN
                ('plaintext','dual_write','backfill','read_switch','contract','finalized')),
            version bigint NOT NULL DEFAULT 1,
            changed_at timestamptz NOT NULL DEFAULT now(),
            created_at timestamptz NOT NULL DEFAULT now(),
            backfill_control jsonb NOT NULL DEFAULT '{}'::jsonb,
            schema_notes jsonb NOT NULL DEFAULT '{}'::jsonb
        )""",
        """
        CREATE TABLE dualwrite_audit (
            id bigserial PRIMARY KEY,
            migration text NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            actor text NOT NULL,
            action text NOT NULL DEFAULT 'phase',
            from_phase text,
            to_phase text,
            from_version bigint,
            to_version bigint,
            reason text,
            forced boolean NOT NULL DEFAULT false,
            outcome text NOT NULL DEFAULT 'applied',
            guards jsonb NOT NULL DEFAULT '[]'::jsonb
        )""",
        "CREATE INDEX ix_dualwrite_audit_migration_at ON dualwrite_audit (migration, at)",
        """
        CREATE TABLE dualwrite_instances (
            instance_id text NOT NULL,
            migration text NOT NULL,
            role text NOT NULL DEFAULT 'api',
            host text NOT NULL DEFAULT '',
            pid integer NOT NULL DEFAULT 0,
            observed_phase text,
            observed_version bigint,
            key_versions text[] NOT NULL DEFAULT '{}',
            started_at timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (instance_id, migration)
        )""",
        """
        CREATE TABLE dualwrite_read_events (
            migration text NOT NULL,
            state_version bigint NOT NULL,
            kind text NOT NULL
                CHECK (kind IN ('shadow_mismatch','read_fallback','decrypt_failure')),
            count bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (migration, state_version, kind)
        )""",
        """
        CREATE TABLE dualwrite_checkpoints (
            migration text NOT NULL,
            mode text NOT NULL,
            shard integer NOT NULL DEFAULT 0,
            run_id text,
            last_key text,
            rows_done bigint NOT NULL DEFAULT 0,
            rows_failed bigint NOT NULL DEFAULT 0,
            started_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            PRIMARY KEY (migration, mode, shard)
        )""",
        """
        CREATE TABLE dualwrite_verifications (
            id bigserial PRIMARY KEY,
            migration text NOT NULL,
            phase text NOT NULL,
            started_at timestamptz NOT NULL,
            finished_at timestamptz NOT NULL DEFAULT now(),
            full_scan boolean NOT NULL,
            checked bigint NOT NULL DEFAULT 0,
            missing bigint NOT NULL DEFAULT 0,
            mismatched bigint NOT NULL DEFAULT 0,
            undecryptable bigint NOT NULL DEFAULT 0,
            per_field jsonb NOT NULL DEFAULT '{}'::jsonb
        )""",
        """
        CREATE TABLE dualwrite_gate_results (
            id bigserial PRIMARY KEY,
            migration text NOT NULL,
            phase text NOT NULL,
            finished_at timestamptz NOT NULL DEFAULT now(),
            passed boolean NOT NULL,
            summary jsonb NOT NULL DEFAULT '{}'::jsonb
        )""",
    ]


def drop_state_tables_ddl() -> list[str]:
    return [
        f"DROP TABLE IF EXISTS {t}"
        for t in (
            "dualwrite_gate_results",
            "dualwrite_verifications",
            "dualwrite_checkpoints",
            "dualwrite_read_events",
            "dualwrite_instances",
            "dualwrite_audit",
            "dualwrite_migrations",
        )
    ]


def expand_columns_ddl(spec: MigrationSpec) -> list[str]:
    adds: list[str] = []
    for f in spec.fields:
        adds.append(f"ADD COLUMN IF NOT EXISTS {f.ciphertext_column} bytea")
        if f.bidx_column:
            adds.append(f"ADD COLUMN IF NOT EXISTS {f.bidx_column} bytea")
    # contract writes NULL plaintext: a NOT NULL plaintext column must accept it from now on
    drops = [f"ALTER COLUMN {f.plaintext_column} DROP NOT NULL" for f in spec.fields]
    return [
        f"ALTER TABLE {spec.table} " + ", ".join(adds),
        f"ALTER TABLE {spec.table} " + ", ".join(drops),
    ]


def _guard_function(spec: MigrationSpec) -> str:
    return f"dualwrite_{spec.table}_stale_guard"


def stale_guard_ddl(spec: MigrationSpec) -> list[str]:
    """BEFORE UPDATE trigger: a plaintext change without a ciphertext change clears the ciphertext
    (and blind index), unless the transaction set :data:`KEEP_CIPHERTEXT_SETTING`."""
    blocks = []
    for f in spec.fields:
        clear = f"NEW.{f.ciphertext_column} := NULL;"
        if f.bidx_column:
            clear += f" NEW.{f.bidx_column} := NULL;"
        blocks.append(
            f"  IF NEW.{f.plaintext_column} IS DISTINCT FROM OLD.{f.plaintext_column}\n"
            f"     AND NEW.{f.ciphertext_column} IS NOT DISTINCT FROM "
            f"OLD.{f.ciphertext_column} THEN\n"
            f"    {clear}\n  END IF;"
        )
    body = "\n".join(blocks)
    columns = ", ".join(f.plaintext_column for f in spec.fields)
    fn = _guard_function(spec)
    return [
        f"""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF coalesce(current_setting('{KEEP_CIPHERTEXT_SETTING}', true), '') = 'on' THEN
    RETURN NEW;
  END IF;
{body}
  RETURN NEW;
END
$fn$""",
        f"DROP TRIGGER IF EXISTS {STALE_GUARD_TRIGGER} ON {spec.table}",
        f"CREATE TRIGGER {STALE_GUARD_TRIGGER} BEFORE UPDATE OF {columns} ON {spec.table} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
    ]


def drop_stale_guard_ddl(spec: MigrationSpec) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {STALE_GUARD_TRIGGER} ON {spec.table}",
        f"DROP FUNCTION IF EXISTS {_guard_function(spec)}()",
    ]


def blind_index_name(spec: MigrationSpec, column: str) -> str:
    return f"ix_{spec.table}_{column}"[:63]


def blind_index_ddl(spec: MigrationSpec, *, concurrently: bool = True) -> list[str]:
    """Indexes on ``(<scope_column>, <field>_bidx)`` when the spec names a tenant scope column,
    else on the blind index alone. A failed concurrent build leaves an INVALID index that
    ``IF NOT EXISTS`` would keep forever: :data:`INVALID_INDEX_SQL` finds it so the expand can
    drop and rebuild it."""
    how = "CONCURRENTLY " if concurrently else ""
    out = []
    for f in spec.searchable:
        assert f.bidx_column is not None
        cols = f"{spec.scope_column}, {f.bidx_column}" if spec.scope_column else f.bidx_column
        out.append(
            f"CREATE INDEX {how}IF NOT EXISTS {blind_index_name(spec, f.bidx_column)} "
            f"ON {spec.table} ({cols})"
        )
    return out


INVALID_INDEX_SQL = (
    "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE c.relname = :name AND NOT i.indisvalid"
)
"""Parameter ``:name``: returns a row when that index exists but is INVALID."""


def unexpand_ddl(spec: MigrationSpec, restore_not_null: list[str] | None = None) -> list[str]:
    """Drop what :func:`expand_columns_ddl` added; restore ``NOT NULL`` on the plaintext columns
    that had it before the expand (recorded at expand time)."""
    drops: list[str] = []
    for f in spec.fields:
        drops.append(f"DROP COLUMN IF EXISTS {f.ciphertext_column}")
        if f.bidx_column:
            drops.append(f"DROP COLUMN IF EXISTS {f.bidx_column}")
    out = [*drop_stale_guard_ddl(spec), f"ALTER TABLE {spec.table} " + ", ".join(drops)]
    for column in restore_not_null or []:
        if column in spec.field_names:
            out.append(f"ALTER TABLE {spec.table} ALTER COLUMN {column} SET NOT NULL")
    return out


def contract_ddl(spec: MigrationSpec) -> list[str]:
    drops = ", ".join(f"DROP COLUMN IF EXISTS {f.plaintext_column}" for f in spec.fields)
    return [*drop_stale_guard_ddl(spec), f"ALTER TABLE {spec.table} {drops}"]


def uncontract_ddl(spec: MigrationSpec) -> list[str]:
    adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {f.plaintext_column} text" for f in spec.fields)
    return [f"ALTER TABLE {spec.table} {adds}", *stale_guard_ddl(spec)]


def missing_ciphertext_predicate(spec: MigrationSpec) -> str:
    """Rows not covered: some plaintext present whose ciphertext (or blind index) is missing."""
    parts = []
    for f in spec.fields:
        missing = f"{f.ciphertext_column} IS NULL"
        if f.bidx_column:
            missing = f"({missing} OR {f.bidx_column} IS NULL)"
        parts.append(f"({f.plaintext_column} IS NOT NULL AND {missing})")
    return "(" + " OR ".join(parts) + ")"


def plaintext_incomplete_predicate(spec: MigrationSpec) -> str:
    """Rows whose plaintext is not complete: a ciphertext without its plaintext."""
    parts = [
        f"({f.plaintext_column} IS NULL AND {f.ciphertext_column} IS NOT NULL)" for f in spec.fields
    ]
    return "(" + " OR ".join(parts) + ")"


def plaintext_remaining_predicate(spec: MigrationSpec) -> str:
    """Rows still holding some plaintext (not yet purged)."""
    return "(" + " OR ".join(f"{f.plaintext_column} IS NOT NULL" for f in spec.fields) + ")"


def count_missing_ciphertext_sql(spec: MigrationSpec) -> str:
    return f"SELECT count(*) FROM {spec.table} WHERE {missing_ciphertext_predicate(spec)}"


def count_plaintext_incomplete_sql(spec: MigrationSpec) -> str:
    return f"SELECT count(*) FROM {spec.table} WHERE {plaintext_incomplete_predicate(spec)}"


def count_plaintext_remaining_sql(spec: MigrationSpec) -> str:
    return f"SELECT count(*) FROM {spec.table} WHERE {plaintext_remaining_predicate(spec)}"


def version_prefix(version: str) -> bytes:
    """The ciphertext prefix of a key version: ``"v2"`` -> ``b"v2:"``."""
    if not is_version_label(version):
        raise ValueError("version must be a key version label like 'v2'")
    return version.encode("ascii") + b":"


def _bytea_literal(raw: bytes) -> str:
    return "'\\x" + raw.hex() + "'::bytea"


def rekey_predicate(spec: MigrationSpec, current_version: str) -> str:
    """Rows holding a ciphertext that is not under ``current_version``.

    >>> from dualwrite.spec import FieldSpec
    >>> print(rekey_predicate(MigrationSpec("t_pii", "t", (FieldSpec("email"),)), "v2"))
    ... # doctest: +NORMALIZE_WHITESPACE
    ((email_encrypted IS NOT NULL AND substring(email_encrypted from 1 for 3)
      <> '\\x76323a'::bytea))
    """
    prefix = version_prefix(current_version)
    parts = [
        f"({f.ciphertext_column} IS NOT NULL AND substring({f.ciphertext_column} from 1 for "
        f"{len(prefix)}) <> {_bytea_literal(prefix)})"
        for f in spec.fields
    ]
    return "(" + " OR ".join(parts) + ")"
