"""The fleet: one heartbeat row per (instance, migration) in ``dualwrite_instances``.

``last_seen`` is always the database clock, never an app host's clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.errors import RequestError
from dualwrite.phases import InstanceView, Phase, liveness_window_seconds
from dualwrite.state.audit_log import AuditRecord, record_audit

__all__ = [
    "Heartbeat",
    "forget_instance",
    "heartbeat",
    "list_instances",
    "remove_instance",
]


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
    poll_interval_seconds: float | None = None  # this instance's own interval (liveness)
    longest_request_seconds: float | None = None  # the longest request it has served lately
    recent_p95_ms: float | None = None  # its recent request latency
    # per route: {"GET /clients/{id}": {"p95_ms": 12.5, "n": 140}, ...} (RecentLatency.by_route)
    recent_latency: Mapping[str, Mapping[str, float]] | None = None


async def heartbeat(conn: AsyncConnection, hb: Heartbeat) -> None:
    """Upsert what this instance observed; ``last_seen`` is the database clock."""
    await conn.execute(
        text(
            "INSERT INTO dualwrite_instances (instance_id, migration, role, host, pid, "
            "observed_phase, observed_version, key_versions, last_seen, poll_interval_seconds, "
            "observed_at, longest_request_seconds, recent_p95_ms, recent_latency) VALUES (:i, "
            ":m, :role, :host, :pid, :phase, :ver, :keys, clock_timestamp(), :interval, "
            "clock_timestamp(), :longest, :p95, CAST(:routes AS jsonb)) ON CONFLICT (instance_id, "
            "migration) DO UPDATE SET role = excluded.role, host = excluded.host, pid = "
            "excluded.pid, observed_phase = excluded.observed_phase, observed_version = "
            "excluded.observed_version, key_versions = excluded.key_versions, last_seen = "
            "excluded.last_seen, poll_interval_seconds = excluded.poll_interval_seconds, "
            "observed_at = CASE WHEN dualwrite_instances.observed_version IS NOT DISTINCT FROM "
            "excluded.observed_version THEN dualwrite_instances.observed_at ELSE "
            "excluded.observed_at END, longest_request_seconds = "
            "excluded.longest_request_seconds, recent_p95_ms = excluded.recent_p95_ms, "
            "recent_latency = excluded.recent_latency"
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
            "interval": hb.poll_interval_seconds,
            "longest": hb.longest_request_seconds,
            "p95": hb.recent_p95_ms,
            "routes": None if hb.recent_latency is None else json.dumps(hb.recent_latency),
        },
    )


async def remove_instance(conn: AsyncConnection, instance_id: str) -> None:
    """Forget an instance on clean shutdown (so it stops counting at once)."""
    await conn.execute(
        text("DELETE FROM dualwrite_instances WHERE instance_id = :i"), {"i": instance_id}
    )


async def forget_instance(
    conn: AsyncConnection,
    instance_id: str,
    migration: str,
    *,
    actor: str,
    reason: str,
    fallback_interval: float,
) -> InstanceView:
    """Delete one vanished instance's heartbeat of ``migration`` and audit it (the caller's
    transaction holds both; ``fallback_interval``: the operator's poll interval, for a row that
    reports none). Refused (:class:`~dualwrite.errors.RequestError`) for an unknown
    instance or one still live: a live instance would heartbeat again, so stop it instead."""
    if not reason.strip():
        raise RequestError("forgetting an instance needs a reason (kept in the audit log)")
    found = [i for i in await list_instances(conn, migration) if i.instance_id == instance_id]
    if not found:
        raise RequestError(f"no instance {instance_id!r} heartbeats migration {migration!r}")
    (inst,) = found
    now = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
    age = (now - inst.last_seen).total_seconds()
    window = liveness_window_seconds(inst, fallback_interval)
    if age < window:
        raise RequestError(
            f"{inst.label} is live (heard from {age:.1f}s ago, window {window:.0f}s): stop it "
            "instead (a graceful stop deregisters it)"
        )
    await conn.execute(
        text("DELETE FROM dualwrite_instances WHERE instance_id = :i AND migration = :m"),
        {"i": instance_id, "m": migration},
    )
    await record_audit(
        conn,
        AuditRecord(
            migration=migration,
            actor=actor,
            from_phase=inst.observed_phase.value if inst.observed_phase else None,
            to_phase=None,
            reason=f"forgot {inst.label} (not heard from for {age:.0f}s): {reason}",
            action="fleet_forget",
            from_version=inst.observed_version,
        ),
    )
    return inst


async def list_instances(conn: AsyncConnection, migration: str) -> list[InstanceView]:
    rows = await conn.execute(
        text(
            "SELECT instance_id, host, pid, observed_phase, observed_version, key_versions, "
            "last_seen, poll_interval_seconds, observed_at, longest_request_seconds, "
            "recent_p95_ms FROM dualwrite_instances WHERE migration = :m ORDER BY instance_id"
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
            poll_interval_seconds=r.poll_interval_seconds,
            observed_at=r.observed_at,
            longest_request_seconds=r.longest_request_seconds,
            recent_p95_ms=r.recent_p95_ms,
        )
        for r in rows
    ]
