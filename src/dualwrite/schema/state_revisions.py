"""Revisions of dualwrite's own state tables, each with its reverse (pure SQL text).

The state tables (``dualwrite_migrations``, ``dualwrite_instances``, ...) belong to dualwrite,
not to the application, so they are versioned by dualwrite itself: ``dualwrite_state_version``
holds the revision the database is at (no such table: revision 1, the original layout).
:func:`upgrade_statements` lists what brings a database from any revision to
:data:`STATE_SCHEMA_VERSION`; ``dualwrite db upgrade`` applies it after the Alembic revisions,
so a migration in flight survives upgrading dualwrite (every revision only adds nullable
columns and tables: instances of an older dualwrite keep working, and what they cannot report
stays NULL, which the guards read as "not satisfied").

>>> STATE_SCHEMA_VERSION
4
>>> [s.split(" (")[0] for s in upgrade_statements(1)][:1]
['CREATE TABLE IF NOT EXISTS dualwrite_state_version']
>>> upgrade_statements(STATE_SCHEMA_VERSION)
[]
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "REVISIONS",
    "STATE_SCHEMA_VERSION",
    "StateRevision",
    "create_statements",
    "downgrade_statements",
    "drop_statements",
    "upgrade_statements",
]


@dataclass(frozen=True, slots=True)
class StateRevision:
    version: int
    summary: str
    upgrade: tuple[str, ...]
    downgrade: tuple[str, ...]


_SET_VERSION = (
    "INSERT INTO dualwrite_state_version (singleton, version) VALUES (true, {v}) "
    "ON CONFLICT (singleton) DO UPDATE SET version = excluded.version, upgraded_at = now()"
)

_INITIAL = (
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
)

REVISIONS: tuple[StateRevision, ...] = (
    StateRevision(
        1,
        "the state tables: migrations (phase row), audit, instances, read events, checkpoints, "
        "verifications, gate results",
        _INITIAL,
        tuple(
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
        ),
    ),
    StateRevision(
        2,
        "fleet liveness: each instance's own poll interval, when it observed its version, its "
        "longest request and recent p95 latency",
        (
            "CREATE TABLE IF NOT EXISTS dualwrite_state_version (singleton boolean PRIMARY KEY "
            "DEFAULT true CHECK (singleton), version integer NOT NULL, upgraded_at timestamptz "
            "NOT NULL DEFAULT now())",
            "ALTER TABLE dualwrite_instances "
            "ADD COLUMN IF NOT EXISTS poll_interval_seconds double precision, "
            "ADD COLUMN IF NOT EXISTS observed_at timestamptz, "
            "ADD COLUMN IF NOT EXISTS longest_request_seconds double precision, "
            "ADD COLUMN IF NOT EXISTS recent_p95_ms double precision",
        ),
        (
            "ALTER TABLE dualwrite_instances DROP COLUMN IF EXISTS poll_interval_seconds, "
            "DROP COLUMN IF EXISTS observed_at, DROP COLUMN IF EXISTS longest_request_seconds, "
            "DROP COLUMN IF EXISTS recent_p95_ms",
            "DROP TABLE IF EXISTS dualwrite_state_version",
        ),
    ),
    StateRevision(
        3,
        "online schema steps: the journal of expand/contract/rewrite/scan steps, so a rerun "
        "resumes and a downgrade restores what a step recorded before changing it",
        (
            """
        CREATE TABLE IF NOT EXISTS dualwrite_schema_steps (
            migration text NOT NULL,
            operation text NOT NULL,
            step text NOT NULL,
            position integer NOT NULL DEFAULT 0,
            status text NOT NULL
                CHECK (status IN ('started','done','failed','rolled_back','pending')),
            detail jsonb NOT NULL DEFAULT '{}'::jsonb,
            started_at timestamptz,
            finished_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (migration, operation, step)
        )""",
        ),
        ("DROP TABLE IF EXISTS dualwrite_schema_steps",),
    ),
    StateRevision(
        4,
        "the latency budget: each instance's recent p95 per route, and why each backfill "
        "worker is throttled",
        (
            "ALTER TABLE dualwrite_instances ADD COLUMN IF NOT EXISTS recent_latency jsonb",
            "ALTER TABLE dualwrite_checkpoints ADD COLUMN IF NOT EXISTS throttle jsonb",
        ),
        (
            "ALTER TABLE dualwrite_checkpoints DROP COLUMN IF EXISTS throttle",
            "ALTER TABLE dualwrite_instances DROP COLUMN IF EXISTS recent_latency",
        ),
    ),
)

STATE_SCHEMA_VERSION = REVISIONS[-1].version
"""The state-table revision this version of dualwrite reads and writes."""


def upgrade_statements(current: int) -> list[str]:
    """Statements bringing the state tables from revision ``current`` (0: none) to the latest."""
    out: list[str] = []
    for rev in REVISIONS:
        if rev.version > current:
            out += list(rev.upgrade)
            if rev.version > 1:  # revision 1 predates the version table
                out.append(_SET_VERSION.format(v=rev.version))
    return out


def downgrade_statements(current: int, target: int) -> list[str]:
    """Statements bringing the state tables from ``current`` down to ``target`` (newest first)."""
    out: list[str] = []
    for rev in reversed(REVISIONS):
        if target < rev.version <= current:
            out += list(rev.downgrade)
            if rev.version - 1 > 1:
                out.append(_SET_VERSION.format(v=rev.version - 1))
    return out


def create_statements() -> list[str]:
    """Every state table at the latest revision (a fresh database)."""
    return upgrade_statements(0)


def drop_statements() -> list[str]:
    """Reverse of :func:`create_statements`."""
    return downgrade_statements(STATE_SCHEMA_VERSION, 0)
