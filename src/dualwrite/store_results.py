"""PostgreSQL-backed results of work on the table: coverage, backfill checkpoints, verification
runs and latency-gate verdicts (the facts the phase guards judge).

Split from :mod:`dualwrite.store`, which re-exports every name here: ``store.coverage``,
``store.Checkpoint`` and the rest keep working. Same rules as there: every function takes an
open :class:`~sqlalchemy.ext.asyncio.AsyncConnection` and does one thing; the caller owns the
transaction.

>>> async with engine.connect() as conn:                                # doctest: +SKIP
...     cov = await coverage(conn, CLIENTS_PII)
...     cp = await get_checkpoint(conn, "clients_pii", "encrypt")
>>> cov.percent, cp.rows_done                                           # doctest: +SKIP
(100.0, 20000)
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
from dualwrite.phases import GateView, Phase, VerificationView
from dualwrite.spec import MigrationSpec

__all__ = [
    "Checkpoint",
    "Coverage",
    "VerificationRecord",
    "coverage",
    "get_checkpoint",
    "last_backfill_finished_at",
    "latest_gate",
    "latest_verification",
    "list_checkpoints",
    "plaintext_columns_present",
    "record_gate",
    "record_verification",
    "save_checkpoint",
]


# --- coverage -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Coverage:
    total_rows: int
    rows_missing_ciphertext: int
    rows_ciphertext_without_plaintext: int
    rows_with_plaintext: int

    @property
    def percent(self) -> float:
        if self.total_rows == 0:
            return 100.0
        return 100.0 * (self.total_rows - self.rows_missing_ciphertext) / self.total_rows


async def plaintext_columns_present(conn: AsyncConnection, spec: MigrationSpec) -> bool:
    n = (
        await conn.execute(
            text(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = :t AND column_name = ANY(:cols)"
            ),
            {"t": spec.table, "cols": list(spec.field_names)},
        )
    ).scalar_one()
    return int(n) == len(spec.fields)


async def coverage(conn: AsyncConnection, spec: MigrationSpec) -> Coverage:
    """One scan counting total, uncovered, plaintext-incomplete and not-yet-purged rows."""
    missing = schema_sql.missing_ciphertext_predicate(spec)
    incomplete = schema_sql.plaintext_incomplete_predicate(spec)
    remaining = schema_sql.plaintext_remaining_predicate(spec)
    if not await plaintext_columns_present(conn, spec):
        total = (await conn.execute(text(f"SELECT count(*) FROM {spec.table}"))).scalar_one()
        return Coverage(int(total), 0, 0, 0)
    row = (
        await conn.execute(
            text(
                "SELECT count(*) AS total, "
                f"count(*) FILTER (WHERE {missing}) AS missing, "
                f"count(*) FILTER (WHERE {incomplete}) AS incomplete, "
                f"count(*) FILTER (WHERE {remaining}) AS remaining "
                f"FROM {spec.table}"
            )
        )
    ).one()
    return Coverage(int(row.total), int(row.missing), int(row.incomplete), int(row.remaining))


# --- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    migration: str
    mode: str
    shard: int = 0
    run_id: str | None = None
    last_key: str | None = None
    rows_done: int = 0
    rows_failed: int = 0
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None


_CHECKPOINT_SELECT = (
    "SELECT migration, mode, shard, run_id, last_key, rows_done, rows_failed, started_at, "
    "updated_at, finished_at FROM dualwrite_checkpoints WHERE migration = :m"
)


async def get_checkpoint(
    conn: AsyncConnection, migration: str, mode: str, shard: int = 0
) -> Checkpoint | None:
    row = (
        await conn.execute(
            text(f"{_CHECKPOINT_SELECT} AND mode = :mode AND shard = :s"),
            {"m": migration, "mode": mode, "s": shard},
        )
    ).first()
    return Checkpoint(**row._mapping) if row else None


async def list_checkpoints(conn: AsyncConnection, migration: str) -> list[Checkpoint]:
    """Every backfill checkpoint of ``migration`` (one per mode and shard), by mode and shard."""
    rows = await conn.execute(text(f"{_CHECKPOINT_SELECT} ORDER BY mode, shard"), {"m": migration})
    return [Checkpoint(**r._mapping) for r in rows]


async def save_checkpoint(conn: AsyncConnection, cp: Checkpoint) -> None:
    """Upsert a checkpoint (``updated_at`` = now)."""
    await conn.execute(
        text(
            "INSERT INTO dualwrite_checkpoints (migration, mode, shard, run_id, last_key, "
            "rows_done, rows_failed, started_at, updated_at, finished_at) VALUES (:migration, "
            ":mode, :shard, :run_id, :last_key, :rows_done, :rows_failed, :started_at, "
            "clock_timestamp(), :finished_at) ON CONFLICT (migration, mode, shard) DO UPDATE SET "
            "run_id = excluded.run_id, last_key = excluded.last_key, rows_done = "
            "excluded.rows_done, rows_failed = excluded.rows_failed, started_at = "
            "excluded.started_at, updated_at = excluded.updated_at, finished_at = "
            "excluded.finished_at"
        ),
        {
            "migration": cp.migration,
            "mode": cp.mode,
            "shard": cp.shard,
            "run_id": cp.run_id,
            "last_key": cp.last_key,
            "rows_done": cp.rows_done,
            "rows_failed": cp.rows_failed,
            "started_at": cp.started_at,
            "finished_at": cp.finished_at,
        },
    )


async def last_backfill_finished_at(conn: AsyncConnection, migration: str) -> datetime | None:
    """When an ``encrypt`` run last ended with nothing left to convert (the guard's fact)."""
    value = (
        await conn.execute(
            text(
                "SELECT max(finished_at) FROM dualwrite_checkpoints WHERE migration = :m "
                "AND mode = 'encrypt'"
            ),
            {"m": migration},
        )
    ).scalar()
    return value if isinstance(value, datetime) else None


# --- verification and latency gate results --------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationRecord:
    migration: str
    phase: Phase
    started_at: datetime
    full: bool
    checked: int
    missing: int
    mismatched: int
    undecryptable: int
    per_field: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


async def record_verification(conn: AsyncConnection, rec: VerificationRecord) -> None:
    await conn.execute(
        text(
            "INSERT INTO dualwrite_verifications (migration, phase, started_at, finished_at, "
            "full_scan, checked, missing, mismatched, undecryptable, per_field) VALUES (:m, :p, "
            ":s, clock_timestamp(), :full, :c, :mi, :mm, :u, CAST(:pf AS jsonb))"
        ),
        {
            "m": rec.migration,
            "p": rec.phase.value,
            "s": rec.started_at,
            "full": rec.full,
            "c": rec.checked,
            "mi": rec.missing,
            "mm": rec.mismatched,
            "u": rec.undecryptable,
            "pf": json.dumps(rec.per_field),
        },
    )


async def latest_verification(
    conn: AsyncConnection, migration: str, *, full_only: bool = True
) -> VerificationView | None:
    """The newest verification run; by default the newest *full* run (the one guards use: a
    later sample run must not hide it)."""
    row = (
        await conn.execute(
            text(
                "SELECT finished_at, full_scan, mismatched, missing, undecryptable, phase FROM "
                "dualwrite_verifications WHERE migration = :m AND (full_scan OR NOT :full_only) "
                "ORDER BY finished_at DESC LIMIT 1"
            ),
            {"m": migration, "full_only": full_only},
        )
    ).first()
    if row is None:
        return None
    return VerificationView(
        finished_at=row.finished_at,
        full=row.full_scan,
        mismatches=int(row.mismatched),
        missing=int(row.missing),
        undecryptable=int(row.undecryptable),
        phase=Phase(row.phase),
    )


async def record_gate(
    conn: AsyncConnection, migration: str, phase: Phase, passed: bool, summary: Mapping[str, Any]
) -> None:
    await conn.execute(
        text(
            "INSERT INTO dualwrite_gate_results (migration, phase, finished_at, passed, summary) "
            "VALUES (:m, :p, clock_timestamp(), :ok, CAST(:s AS jsonb))"
        ),
        {"m": migration, "p": phase.value, "ok": passed, "s": json.dumps(dict(summary))},
    )


async def latest_gate(conn: AsyncConnection, migration: str) -> GateView | None:
    row = (
        await conn.execute(
            text(
                "SELECT finished_at, passed, phase FROM dualwrite_gate_results WHERE migration = "
                ":m ORDER BY finished_at DESC LIMIT 1"
            ),
            {"m": migration},
        )
    ).first()
    if row is None:
        return None
    return GateView(finished_at=row.finished_at, passed=row.passed, phase=Phase(row.phase))
