"""PostgreSQL-backed state: phase row, audit log, heartbeats, read events, checkpoints, results.

This module holds the phase row, the audit log, the fleet's heartbeats and read events; coverage,
checkpoints, verification runs and gate verdicts live in :mod:`dualwrite.store_results` and are
re-exported here, so ``from dualwrite import store`` + ``store.coverage(...)`` reaches them all.

Every function takes an open :class:`~sqlalchemy.ext.asyncio.AsyncConnection` and does one
thing; the caller owns the transaction. The phase row is changed only by
:func:`compare_and_swap_phase`, which succeeds for exactly one of two racing writers.

>>> async with engine.begin() as conn:                                # doctest: +SKIP
...     state = await get_migration(conn, "clients_pii")
...     state = await compare_and_swap_phase(conn, state.name, state.version, Phase.DUAL_WRITE)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite import schema_sql
from dualwrite.errors import TransitionConflictError, UnknownMigrationError
from dualwrite.phases import InstanceView, Phase
from dualwrite.spec import MigrationSpec
from dualwrite.store_results import (
    Checkpoint,
    Coverage,
    VerificationRecord,
    coverage,
    get_checkpoint,
    last_backfill_finished_at,
    latest_gate,
    latest_verification,
    list_checkpoints,
    plaintext_columns_present,
    record_gate,
    record_verification,
    save_checkpoint,
)

__all__ = [  # with every name of dualwrite.store_results (re-exported)
    "AuditRecord",
    "Checkpoint",
    "Coverage",
    "Heartbeat",
    "MigrationState",
    "VerificationRecord",
    "add_read_events",
    "compare_and_swap_phase",
    "coverage",
    "database_now",
    "get_checkpoint",
    "get_migration",
    "heartbeat",
    "last_backfill_finished_at",
    "latest_gate",
    "latest_verification",
    "list_audit",
    "list_checkpoints",
    "list_instances",
    "list_migrations",
    "notify_phase",
    "plaintext_columns_present",
    "read_event_totals",
    "record_audit",
    "record_gate",
    "record_verification",
    "remove_instance",
    "save_checkpoint",
    "update_backfill_control",
]


@dataclass(frozen=True, slots=True)
class MigrationState:
    """One row of ``dualwrite_migrations``."""

    name: str
    spec: MigrationSpec
    phase: Phase
    version: int
    changed_at: datetime
    created_at: datetime
    backfill_control: Mapping[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return self.spec.table


_STATE_COLUMNS = "name, spec, phase, version, changed_at, created_at, backfill_control"


def _state(row: Any) -> MigrationState:
    return MigrationState(
        name=row.name,
        spec=MigrationSpec.from_json(row.spec),
        phase=Phase(row.phase),
        version=int(row.version),
        changed_at=row.changed_at,
        created_at=row.created_at,
        backfill_control=dict(row.backfill_control or {}),
    )


async def list_migrations(conn: AsyncConnection) -> list[MigrationState]:
    rows = await conn.execute(
        text(f"SELECT {_STATE_COLUMNS} FROM dualwrite_migrations ORDER BY name")
    )
    return [_state(r) for r in rows]


async def get_migration(
    conn: AsyncConnection, name: str, *, for_update: bool = False
) -> MigrationState:
    """The state of migration ``name``; :class:`UnknownMigrationError` if it is not registered."""
    lock = " FOR UPDATE" if for_update else ""
    row = (
        await conn.execute(
            text(f"SELECT {_STATE_COLUMNS} FROM dualwrite_migrations WHERE name = :n{lock}"),
            {"n": name},
        )
    ).first()
    if row is None:
        raise UnknownMigrationError(f"unknown migration {name!r}")
    return _state(row)


async def compare_and_swap_phase(
    conn: AsyncConnection, name: str, expected_version: int, target: Phase
) -> MigrationState:
    """Move ``name`` to ``target`` if its version is still ``expected_version``; bump the version.

    Raises :class:`TransitionConflictError` when another change won the race.
    """
    row = (
        await conn.execute(
            text(
                "UPDATE dualwrite_migrations SET phase = :phase, version = version + 1, "
                "changed_at = clock_timestamp() WHERE name = :n AND version = :v "
                f"RETURNING {_STATE_COLUMNS}"
            ),
            {"phase": target.value, "n": name, "v": expected_version},
        )
    ).first()
    if row is None:
        current = await get_migration(conn, name)  # raises for an unknown name
        raise TransitionConflictError(
            f"migration {name} changed concurrently (expected version {expected_version}, "
            f"now {current.version} in {current.phase.value}): re-read and retry"
        )
    return _state(row)


async def notify_phase(conn: AsyncConnection, state: MigrationState) -> None:
    """Announce a change on the ``dualwrite_phase`` channel (delivered at commit)."""
    payload = json.dumps({"name": state.name, "phase": state.phase.value, "version": state.version})
    await conn.execute(
        text("SELECT pg_notify(:ch, :p)"), {"ch": schema_sql.NOTIFY_CHANNEL, "p": payload}
    )


async def update_backfill_control(
    conn: AsyncConnection, name: str, patch: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge ``patch`` into the backfill knobs (``paused``, ``batch_size``, ...); return them."""
    row = (
        await conn.execute(
            text(
                "UPDATE dualwrite_migrations SET backfill_control = backfill_control || "
                "CAST(:p AS jsonb) WHERE name = :n RETURNING backfill_control"
            ),
            {"p": json.dumps(dict(patch)), "n": name},
        )
    ).first()
    if row is None:
        raise UnknownMigrationError(f"unknown migration {name!r}")
    return dict(row[0])


# --- audit ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRecord:
    migration: str
    actor: str
    from_phase: str | None
    to_phase: str | None
    reason: str | None = None
    forced: bool = False
    outcome: str = "applied"  # applied | refused
    action: str = "phase"  # phase | backfill_control | finalize | ...
    from_version: int | None = None
    to_version: int | None = None
    guards: list[dict[str, Any]] = field(default_factory=list)
    at: datetime | None = None
    id: int | None = None


async def record_audit(conn: AsyncConnection, record: AuditRecord) -> None:
    await conn.execute(
        text(
            "INSERT INTO dualwrite_audit (migration, actor, action, from_phase, to_phase, "
            "from_version, to_version, reason, forced, outcome, guards) VALUES (:m, :actor, "
            ":action, :fp, :tp, :fv, :tv, :reason, :forced, :outcome, CAST(:guards AS jsonb))"
        ),
        {
            "m": record.migration,
            "actor": record.actor,
            "action": record.action,
            "fp": record.from_phase,
            "tp": record.to_phase,
            "fv": record.from_version,
            "tv": record.to_version,
            "reason": record.reason,
            "forced": record.forced,
            "outcome": record.outcome,
            "guards": json.dumps(record.guards),
        },
    )


async def list_audit(
    conn: AsyncConnection, migration: str | None = None, limit: int = 100
) -> list[AuditRecord]:
    rows = await conn.execute(
        text(
            "SELECT id, migration, at, actor, action, from_phase, to_phase, from_version, "
            "to_version, reason, forced, outcome, guards FROM dualwrite_audit "
            "WHERE (CAST(:m AS text) IS NULL OR migration = :m) ORDER BY id DESC LIMIT :lim"
        ),
        {"m": migration, "lim": limit},
    )
    return [
        AuditRecord(
            id=r.id,
            migration=r.migration,
            at=r.at,
            actor=r.actor,
            action=r.action,
            from_phase=r.from_phase,
            to_phase=r.to_phase,
            from_version=r.from_version,
            to_version=r.to_version,
            reason=r.reason,
            forced=r.forced,
            outcome=r.outcome,
            guards=list(r.guards or []),
        )
        for r in rows
    ]


# --- fleet ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    instance_id: str
    migration: str
    observed_phase: Phase | None
    observed_version: int | None
    key_versions: frozenset[str]
    role: str = "api"
    host: str = ""
    pid: int = 0


async def heartbeat(conn: AsyncConnection, hb: Heartbeat) -> None:
    """Upsert what this instance observed; ``last_seen`` is the database clock."""
    await conn.execute(
        text(
            "INSERT INTO dualwrite_instances (instance_id, migration, role, host, pid, "
            "observed_phase, observed_version, key_versions, last_seen) VALUES (:i, :m, :role, "
            ":host, :pid, :phase, :ver, :keys, clock_timestamp()) ON CONFLICT (instance_id, "
            "migration) DO UPDATE SET role = excluded.role, host = excluded.host, pid = "
            "excluded.pid, observed_phase = excluded.observed_phase, observed_version = "
            "excluded.observed_version, key_versions = excluded.key_versions, last_seen = "
            "excluded.last_seen"
        ),
        {
            "i": hb.instance_id,
            "m": hb.migration,
            "role": hb.role,
            "host": hb.host,
            "pid": hb.pid,
            "phase": hb.observed_phase.value if hb.observed_phase else None,
            "ver": hb.observed_version,
            "keys": sorted(hb.key_versions),
        },
    )


async def remove_instance(conn: AsyncConnection, instance_id: str) -> None:
    """Forget an instance on clean shutdown (so it stops counting at once)."""
    await conn.execute(
        text("DELETE FROM dualwrite_instances WHERE instance_id = :i"), {"i": instance_id}
    )


async def list_instances(conn: AsyncConnection, migration: str) -> list[InstanceView]:
    rows = await conn.execute(
        text(
            "SELECT instance_id, host, pid, observed_phase, observed_version, key_versions, "
            "last_seen FROM dualwrite_instances WHERE migration = :m ORDER BY instance_id"
        ),
        {"m": migration},
    )
    return [
        InstanceView(
            instance_id=r.instance_id,
            observed_phase=Phase(r.observed_phase) if r.observed_phase else None,
            observed_version=r.observed_version,
            key_versions=frozenset(r.key_versions or ()),
            last_seen=r.last_seen,
            host=r.host,
            pid=r.pid,
        )
        for r in rows
    ]


async def database_now(conn: AsyncConnection) -> datetime:
    """The database clock (heartbeats are judged by it, never by an app host's clock)."""
    value = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
    assert isinstance(value, datetime)
    return value


# --- read events (shadow mismatches, fallbacks) ----------------------------------------------


async def add_read_events(
    conn: AsyncConnection, migration: str, state_version: int, counts: Mapping[str, int]
) -> None:
    """Add per-kind counts (``shadow_mismatch``, ``read_fallback``, ``decrypt_failure``)."""
    for kind, count in counts.items():
        if count:
            await conn.execute(
                text(
                    "INSERT INTO dualwrite_read_events (migration, state_version, kind, count) "
                    "VALUES (:m, :v, :k, :c) ON CONFLICT (migration, state_version, kind) "
                    "DO UPDATE SET count = dualwrite_read_events.count + excluded.count"
                ),
                {"m": migration, "v": state_version, "k": kind, "c": count},
            )


async def read_event_totals(
    conn: AsyncConnection, migration: str, since_version: int
) -> dict[str, int]:
    rows = await conn.execute(
        text(
            "SELECT kind, sum(count) AS n FROM dualwrite_read_events WHERE migration = :m "
            "AND state_version >= :v GROUP BY kind"
        ),
        {"m": migration, "v": since_version},
    )
    return {r.kind: int(r.n) for r in rows}
