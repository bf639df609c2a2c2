"""The audit log: who changed what, when, why, with which guard results (``dualwrite_audit``).

Applied changes are recorded in the same transaction as their compare-and-swap; refusals by the
guards get a row with ``outcome = 'refused'``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "AuditRecord",
    "list_audit",
    "record_audit",
]


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
