"""Results of work on the table that the guards judge: verification runs and latency-gate verdicts.

>>> async with engine.connect() as conn:                                # doctest: +SKIP
...     v = await latest_verification(conn, "clients_pii")
>>> v.full, v.mismatches                                                # doctest: +SKIP
(True, 0)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.logs import log_event
from dualwrite.phases import GateView, Phase, VerificationView

__all__ = [
    "VerificationRecord",
    "latest_gate",
    "latest_verification",
    "record_gate",
    "record_verification",
]

log = logging.getLogger("dualwrite.state.results")


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
    """Record a verification run (in the caller's transaction; logs ``verification_recorded``)."""
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
    problems = rec.missing + rec.mismatched + rec.undecryptable
    log_event(
        log, "verification_recorded", level=logging.WARNING if problems else logging.INFO,
        migration=rec.migration, phase=rec.phase.value, full=rec.full, checked=rec.checked,
        missing=rec.missing, mismatched=rec.mismatched, undecryptable=rec.undecryptable,
    )  # fmt: skip


async def latest_verification(
    conn: AsyncConnection, migration: str, *, full_only: bool = True
) -> VerificationView | None:
    """The newest verification run; by default the newest *full* run (the one guards use: a
    later sample run must not hide it)."""
    row = (
        await conn.execute(
            text(
                "SELECT finished_at, full_scan, mismatched, missing, undecryptable, phase, "
                "started_at FROM "
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
        started_at=row.started_at,
    )


async def record_gate(
    conn: AsyncConnection, migration: str, phase: Phase, passed: bool, summary: Mapping[str, Any]
) -> None:
    """Record a gate verdict (in the caller's transaction; logs ``gate_recorded``)."""
    await conn.execute(
        text(
            "INSERT INTO dualwrite_gate_results (migration, phase, finished_at, passed, summary) "
            "VALUES (:m, :p, clock_timestamp(), :ok, CAST(:s AS jsonb))"
        ),
        {"m": migration, "p": phase.value, "ok": passed, "s": json.dumps(dict(summary))},
    )
    log_event(
        log, "gate_recorded", level=logging.INFO if passed else logging.WARNING,
        migration=migration, phase=phase.value, passed=passed,
    )  # fmt: skip


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
