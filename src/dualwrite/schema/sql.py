"""SQL text for the dualwrite schema, built from a :class:`~dualwrite.spec.MigrationSpec` (pure).

>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> spec = MigrationSpec("t_pii", "t", (FieldSpec("email", blind_index="email"),))
>>> added_columns(spec.field("email"))
['email_encrypted', 'email_bidx']
>>> print(missing_ciphertext_predicate(spec))
(("email" IS NOT NULL AND ("email_encrypted" IS NULL OR "email_bidx" IS NULL)))

Identifiers come from a validated spec (lower-case SQL identifiers only), never from user input,
and every one is emitted quoted (a table named ``user`` or ``order`` works). A table outside
``public`` is ``"schema"."table"``; the functions derived from it live in the same schema and
their names (:func:`derived_name`) stay within 63 bytes and unique per schema. ``unique``
fields add ``<name>_uidx`` (see :mod:`dualwrite.schema.unique` for its index).
"""

from __future__ import annotations

import hashlib

from dualwrite.crypto import is_version_label
from dualwrite.spec import FieldSpec, MigrationSpec
from dualwrite.spec import quote_ident as _q

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


def added_columns(f: FieldSpec) -> list[str]:
    """The columns the expand adds for one field: ciphertext, blind index, unique HMAC."""
    return [c for c in (f.ciphertext_column, f.bidx_column, f.uidx_column) if c]


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


def in_schema(spec: MigrationSpec, name: str) -> str:
    """``name`` (quoted) in the table's schema: a derived function or an index of the table.

    >>> in_schema(MigrationSpec("p", "clinic.patients", (FieldSpec("a"),)), "ix_a")
    '"clinic"."ix_a"'
    """
    return f"{_q(spec.schema)}.{_q(name)}" if spec.schema else _q(name)


def stale_guard_function(spec: MigrationSpec) -> str:
    """The guard function, as emitted (quoted, in the table's schema)."""
    return in_schema(spec, derived_name("dualwrite", spec.table_name, "stale_guard"))


def key_guard_function(spec: MigrationSpec) -> str:
    return in_schema(spec, derived_name("dualwrite", spec.table_name, "key_guard"))


def _key_change_check(spec: MigrationSpec) -> str:
    """PL/pgSQL: refuse a primary-key change that keeps a non-NULL ciphertext unchanged (it is
    bound to the old key and would never decrypt again)."""
    pk = _q(spec.primary_key)
    kept = " OR ".join(
        f"(NEW.{_q(f.ciphertext_column)} IS NOT NULL AND NEW.{_q(f.ciphertext_column)} IS NOT "
        f"DISTINCT FROM OLD.{_q(f.ciphertext_column)})"
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
    return f"ALTER TABLE {spec.sql_table} ENABLE ALWAYS TRIGGER {_q(trigger)}"


def stale_guard_function_ddl(spec: MigrationSpec) -> str:
    """``CREATE OR REPLACE FUNCTION`` of the stale guard (takes no lock on the table).

    A plaintext change without a ciphertext change clears the ciphertext (and blind index),
    unless the transaction set :data:`KEEP_CIPHERTEXT_SETTING`; a primary-key change that does
    not rewrite every non-NULL ciphertext is refused (always). A ``unique`` field's ``_uidx`` is
    cleared with its ciphertext (the backfill recomputes both)."""
    blocks = []
    for f in spec.fields:
        clear = " ".join(f"NEW.{_q(c)} := NULL;" for c in added_columns(f))
        pt, ct = _q(f.plaintext_column), _q(f.ciphertext_column)
        blocks.append(
            f"  IF NEW.{pt} IS DISTINCT FROM OLD.{pt}\n"
            f"     AND NEW.{ct} IS NOT DISTINCT FROM OLD.{ct} THEN\n"
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

    >>> spec = MigrationSpec("t_pii", "s.t", (FieldSpec("a"),))
    >>> print(install_trigger_ddl(spec, "g", stale_guard_function(spec)))
    ... # doctest: +NORMALIZE_WHITESPACE
    DO $dw$ BEGIN
      CREATE OR REPLACE TRIGGER "g" BEFORE UPDATE ON "s"."t" FOR EACH ROW
        EXECUTE FUNCTION "s"."dualwrite_t_stale_guard"();
      ALTER TABLE "s"."t" ENABLE ALWAYS TRIGGER "g";
    END $dw$
    """
    return (
        "DO $dw$ BEGIN\n"
        f"  CREATE OR REPLACE TRIGGER {_q(trigger)} BEFORE UPDATE ON {spec.sql_table} "
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
        f"DROP TRIGGER IF EXISTS {_q(STALE_GUARD_TRIGGER)} ON {spec.sql_table}",
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
        f"DROP TRIGGER IF EXISTS {_q(KEY_GUARD_TRIGGER)} ON {spec.sql_table}",
        f"DROP FUNCTION IF EXISTS {key_guard_function(spec)}()",
    ]


TRIGGER_ENABLED_SQL = (
    "SELECT t.tgenabled::text FROM pg_trigger t WHERE t.tgname = :g "
    "AND t.tgrelid = to_regclass(:t) AND NOT t.tgisinternal"
)
"""``:g`` trigger, ``:t`` table -> ``tgenabled`` (``A`` = always, ``O`` = origin only, ``D`` =
disabled, ``R`` = replica only), no row when the trigger is missing."""


def blind_index_name(spec: MigrationSpec, column: str) -> str:
    """``ix_<table>_<column>`` (unquoted; within 63 bytes, unique per schema)."""
    return derived_name("ix", spec.table_name, column)


def blind_index_ddl(spec: MigrationSpec, *, concurrently: bool = True) -> list[str]:
    """Indexes on ``(<scope_column>, <field>_bidx)`` when the spec names a tenant scope column,
    else on the blind index alone. A failed concurrent build leaves an INVALID index that
    ``IF NOT EXISTS`` would keep forever: the expand's index step
    (:class:`~dualwrite.schema.ddl.index.CreateIndex`) drops and rebuilds it."""
    how = "CONCURRENTLY " if concurrently else ""
    out = []
    for f in spec.searchable:
        assert f.bidx_column is not None
        cols = ", ".join(_q(c) for c in (spec.scope_column, f.bidx_column) if c)
        out.append(
            f"CREATE INDEX {how}IF NOT EXISTS {_q(blind_index_name(spec, f.bidx_column))} "
            f"ON {spec.sql_table} ({cols})"
        )
    return out


def contract_ddl(spec: MigrationSpec) -> list[str]:
    """The contract's DDL as plain statements for one transaction (tools and tests; the
    contract revision runs :mod:`dualwrite.schema.ddl.plans` instead: preflight, fence, ...)."""
    drops = ", ".join(f"DROP COLUMN IF EXISTS {_q(f.plaintext_column)}" for f in spec.fields)
    return [
        *drop_stale_guard_ddl(spec),
        f"ALTER TABLE {spec.sql_table} {drops}",
        *key_guard_ddl(spec),
    ]


def uncontract_ddl(spec: MigrationSpec) -> list[str]:
    """Re-add the plaintext columns (nullable, with the type registered for each field)."""
    adds = ", ".join(
        f"ADD COLUMN IF NOT EXISTS {_q(f.plaintext_column)} {f.type}" for f in spec.fields
    )
    return [
        *drop_key_guard_ddl(spec),
        f"ALTER TABLE {spec.sql_table} {adds}",
        *stale_guard_ddl(spec),
    ]


def missing_ciphertext_predicate(spec: MigrationSpec) -> str:
    """Rows not covered: some plaintext present whose ciphertext (or blind index) is missing."""
    parts = []
    for f in spec.fields:
        cols = added_columns(f)
        missing = " OR ".join(f"{_q(c)} IS NULL" for c in cols)
        missing = f"({missing})" if len(cols) > 1 else missing
        parts.append(f"({_q(f.plaintext_column)} IS NOT NULL AND {missing})")
    return "(" + " OR ".join(parts) + ")"


def plaintext_incomplete_predicate(spec: MigrationSpec) -> str:
    """Rows whose plaintext is not complete: a ciphertext without its plaintext."""
    parts = [
        f"({_q(f.plaintext_column)} IS NULL AND {_q(f.ciphertext_column)} IS NOT NULL)"
        for f in spec.fields
    ]
    return "(" + " OR ".join(parts) + ")"


def ciphertext_present_predicate(spec: MigrationSpec) -> str:
    """Rows holding some ciphertext (what a decrypt pass checks against its plaintext)."""
    return "(" + " OR ".join(f"{_q(f.ciphertext_column)} IS NOT NULL" for f in spec.fields) + ")"


def plaintext_remaining_predicate(spec: MigrationSpec) -> str:
    """Rows still holding some plaintext (not yet purged)."""
    return "(" + " OR ".join(f"{_q(f.plaintext_column)} IS NOT NULL" for f in spec.fields) + ")"


def fence_name(spec: MigrationSpec) -> str:
    """The constraint finalize adds before dropping the plaintext columns (unquoted)."""
    return derived_name("dualwrite", spec.table_name, "purged")


def fence_ddl(spec: MigrationSpec) -> str:
    """``CHECK (<every plaintext> IS NULL) NOT VALID``: from its commit on, a write that stores
    plaintext fails loudly; ``VALIDATE`` then proves no committed row holds any.

    >>> print(fence_ddl(MigrationSpec("t_pii", "s.t", (FieldSpec("a"), FieldSpec("b")))))
    ... # doctest: +NORMALIZE_WHITESPACE
    ALTER TABLE "s"."t" ADD CONSTRAINT "dualwrite_t_purged"
      CHECK ("a" IS NULL AND "b" IS NULL) NOT VALID
    """
    nulls = " AND ".join(f"{_q(f.plaintext_column)} IS NULL" for f in spec.fields)
    return (
        f"ALTER TABLE {spec.sql_table} ADD CONSTRAINT {_q(fence_name(spec))} "
        f"CHECK ({nulls}) NOT VALID"
    )


def not_null_check_name(spec: MigrationSpec, column: str) -> str:
    """The temporary ``CHECK (column IS NOT NULL)`` that restores ``NOT NULL`` without a scan
    under ACCESS EXCLUSIVE (unquoted)."""
    return derived_name("dualwrite", spec.table_name, column, "nn")


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
    return f"SELECT count(*) FROM {spec.sql_table} WHERE {missing_ciphertext_predicate(spec)}"


def count_plaintext_incomplete_sql(spec: MigrationSpec) -> str:
    return f"SELECT count(*) FROM {spec.sql_table} WHERE {plaintext_incomplete_predicate(spec)}"


def count_plaintext_remaining_sql(spec: MigrationSpec) -> str:
    return f"SELECT count(*) FROM {spec.sql_table} WHERE {plaintext_remaining_predicate(spec)}"


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
    (("email_encrypted" IS NOT NULL AND substring("email_encrypted" from 1 for 3)
      <> '\\x76323a'::bytea))
    """
    prefix = version_prefix(current_version)
    parts = [
        f"({ct} IS NOT NULL AND substring({ct} from 1 for {len(prefix)}) <> "
        f"{_bytea_literal(prefix)})"
        for ct in (_q(f.ciphertext_column) for f in spec.fields)
    ]
    return "(" + " OR ".join(parts) + ")"
