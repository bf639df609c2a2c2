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

import hashlib

from dualwrite.crypto import is_version_label
from dualwrite.spec import MigrationSpec

KEEP_CIPHERTEXT_SETTING = "dualwrite.keep_ciphertext"
"""Transaction-local setting the stale guard honours: framework writes that change plaintext on
purpose while the ciphertext stays right (purge, decrypt-restore) set it to ``on``::

    SELECT set_config('dualwrite.keep_ciphertext', 'on', true)
"""


def keep_ciphertext_sql() -> str:
    """The statement a framework write runs first to mark its transaction (see above)."""
    return f"SELECT set_config('{KEEP_CIPHERTEXT_SETTING}', 'on', true)"


NOTIFY_CHANNEL = "dualwrite_phase"

STALE_GUARD_TRIGGER = "dualwrite_stale_guard"
"""Name of the stale-ciphertext trigger the expand installs on the migrated table."""

KEY_GUARD_TRIGGER = "dualwrite_key_guard"
"""Name of the trigger that replaces it after the contract (guards primary-key changes only)."""


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


def derived_name(*parts: str) -> str:
    """A name derived from identifiers (function, index, constraint), at most 63 bytes: longer
    ones keep their start and end with a hash of the whole, so they stay unique.

    >>> derived_name("dualwrite", "clients", "stale_guard")
    'dualwrite_clients_stale_guard'
    >>> name = derived_name("dualwrite", "a" * 51, "stale_guard"); len(name), name[-9:-8]
    (63, '_')
    """
    name = "_".join(parts)
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name[:54] + "_" + digest


def stale_guard_function(spec: MigrationSpec) -> str:
    return derived_name("dualwrite", spec.table, "stale_guard")


def key_guard_function(spec: MigrationSpec) -> str:
    return derived_name("dualwrite", spec.table, "key_guard")


def _key_change_check(spec: MigrationSpec) -> str:
    """PL/pgSQL: refuse a primary-key change that keeps a non-NULL ciphertext unchanged (it is
    bound to the old key and would never decrypt again)."""
    pk = spec.primary_key
    kept = " OR ".join(
        f"(NEW.{f.ciphertext_column} IS NOT NULL AND NEW.{f.ciphertext_column} IS NOT DISTINCT "
        f"FROM OLD.{f.ciphertext_column})"
        for f in spec.fields
    )
    message = (
        f"dualwrite: a primary key change on {spec.table} must re-encrypt every ciphertext "
        "of the row"
    )
    hint = (
        "each ciphertext is bound to its row key: update the row through dualwrite, or set its "
        "*_encrypted columns to NULL in the same statement so the backfill re-encrypts them"
    )
    return f"""  IF NEW.{pk} IS DISTINCT FROM OLD.{pk} AND ({kept}) THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation', HINT = '{hint}';
  END IF;"""


def _enable_always(spec: MigrationSpec, trigger: str) -> str:
    """Fire for every writer, also under ``session_replication_role = replica`` (logical
    replication apply workers, ETL tools)."""
    return f"ALTER TABLE {spec.table} ENABLE ALWAYS TRIGGER {trigger}"


def stale_guard_function_ddl(spec: MigrationSpec) -> str:
    """``CREATE OR REPLACE FUNCTION`` of the stale guard (takes no lock on the table).

    A plaintext change without a ciphertext change clears the ciphertext (and blind index),
    unless the transaction set :data:`KEEP_CIPHERTEXT_SETTING`; a primary-key change that does
    not rewrite every non-NULL ciphertext is refused (always)."""
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
    return f"""CREATE OR REPLACE FUNCTION {stale_guard_function(spec)}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
{_key_change_check(spec)}
  IF coalesce(current_setting('{KEEP_CIPHERTEXT_SETTING}', true), '') = 'on' THEN
    RETURN NEW;
  END IF;
{body}
  RETURN NEW;
END
$fn$"""


def install_trigger_ddl(spec: MigrationSpec, trigger: str, function: str) -> str:
    """One statement (so one transaction, one lock) that creates or replaces ``trigger`` and
    enables it ALWAYS: there is never a moment with the trigger missing or ORIGIN-only.

    >>> from dualwrite.spec import FieldSpec
    >>> print(install_trigger_ddl(MigrationSpec("t_pii", "t", (FieldSpec("a"),)), "g", "f"))
    DO $dw$ BEGIN
      CREATE OR REPLACE TRIGGER g BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION f();
      ALTER TABLE t ENABLE ALWAYS TRIGGER g;
    END $dw$
    """
    return (
        "DO $dw$ BEGIN\n"
        f"  CREATE OR REPLACE TRIGGER {trigger} BEFORE UPDATE ON {spec.table} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}();\n"
        f"  {_enable_always(spec, trigger)};\n"
        "END $dw$"
    )


def stale_guard_ddl(spec: MigrationSpec) -> list[str]:
    """The ``BEFORE UPDATE`` trigger of the expand, enabled ALWAYS (function, then trigger)."""
    fn = stale_guard_function(spec)
    return [stale_guard_function_ddl(spec), install_trigger_ddl(spec, STALE_GUARD_TRIGGER, fn)]


def drop_stale_guard_ddl(spec: MigrationSpec) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {STALE_GUARD_TRIGGER} ON {spec.table}",
        f"DROP FUNCTION IF EXISTS {stale_guard_function(spec)}()",
    ]


def key_guard_function_ddl(spec: MigrationSpec) -> str:
    """``CREATE OR REPLACE FUNCTION`` of the key guard (no table lock)."""
    return f"""CREATE OR REPLACE FUNCTION {key_guard_function(spec)}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
{_key_change_check(spec)}
  RETURN NEW;
END
$fn$"""


def key_guard_ddl(spec: MigrationSpec) -> list[str]:
    """After the contract: the smaller trigger that keeps refusing key changes that would
    orphan ciphertexts (there is no plaintext left to rebuild them from)."""
    fn = key_guard_function(spec)
    return [key_guard_function_ddl(spec), install_trigger_ddl(spec, KEY_GUARD_TRIGGER, fn)]


def drop_key_guard_ddl(spec: MigrationSpec) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {KEY_GUARD_TRIGGER} ON {spec.table}",
        f"DROP FUNCTION IF EXISTS {key_guard_function(spec)}()",
    ]


TRIGGER_ENABLED_SQL = (
    "SELECT t.tgenabled::text FROM pg_trigger t WHERE t.tgname = :g "
    "AND t.tgrelid = to_regclass(:t) AND NOT t.tgisinternal"
)
"""``:g`` trigger, ``:t`` table -> ``tgenabled`` (``A`` = always, ``O`` = origin only, ``D`` =
disabled, ``R`` = replica only), no row when the trigger is missing."""


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
    out = [
        *drop_stale_guard_ddl(spec),
        *drop_key_guard_ddl(spec),
        f"ALTER TABLE {spec.table} " + ", ".join(drops),
    ]
    for column in restore_not_null or []:
        if column in spec.field_names:
            out.append(f"ALTER TABLE {spec.table} ALTER COLUMN {column} SET NOT NULL")
    return out


def contract_ddl(spec: MigrationSpec) -> list[str]:
    drops = ", ".join(f"DROP COLUMN IF EXISTS {f.plaintext_column}" for f in spec.fields)
    return [*drop_stale_guard_ddl(spec), f"ALTER TABLE {spec.table} {drops}", *key_guard_ddl(spec)]


def uncontract_ddl(spec: MigrationSpec) -> list[str]:
    adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {f.plaintext_column} text" for f in spec.fields)
    return [*drop_key_guard_ddl(spec), f"ALTER TABLE {spec.table} {adds}", *stale_guard_ddl(spec)]


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


def fence_name(spec: MigrationSpec) -> str:
    """The constraint finalize adds before dropping the plaintext columns."""
    return derived_name("dualwrite", spec.table, "purged")


def fence_ddl(spec: MigrationSpec) -> str:
    """``CHECK (<every plaintext> IS NULL) NOT VALID``: from its commit on, a write that stores
    plaintext fails loudly; ``VALIDATE`` then proves no committed row holds any.

    >>> from dualwrite.spec import FieldSpec
    >>> print(fence_ddl(MigrationSpec("t_pii", "t", (FieldSpec("a"), FieldSpec("b")))))
    ALTER TABLE t ADD CONSTRAINT dualwrite_t_purged CHECK (a IS NULL AND b IS NULL) NOT VALID
    """
    nulls = " AND ".join(f"{f.plaintext_column} IS NULL" for f in spec.fields)
    return f"ALTER TABLE {spec.table} ADD CONSTRAINT {fence_name(spec)} CHECK ({nulls}) NOT VALID"


def not_null_check_name(spec: MigrationSpec, column: str) -> str:
    """The temporary ``CHECK (column IS NOT NULL)`` that restores ``NOT NULL`` without a scan
    under ACCESS EXCLUSIVE."""
    return derived_name("dualwrite", spec.table, column, "nn")


def concurrent_index_ddl(definition: str) -> str:
    """``pg_get_indexdef`` text -> the same index built ``CONCURRENTLY IF NOT EXISTS``.

    >>> concurrent_index_ddl("CREATE UNIQUE INDEX ix ON public.t USING btree (a)")
    'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix ON public.t USING btree (a)'
    """
    head, sep, rest = definition.partition("INDEX ")
    if not sep or not head.startswith("CREATE"):
        raise ValueError("not an index definition")
    return f"{head}INDEX CONCURRENTLY IF NOT EXISTS {rest}"


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
