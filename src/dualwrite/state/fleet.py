"""The fleet: one heartbeat row per (instance, migration) in ``dualwrite_instances``.

``last_seen`` is always the database clock, never an app host's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.phases import InstanceView, Phase

__all__ = [
    "Heartbeat",
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


async def heartbeat(conn: AsyncConnection, hb: Heartbeat) -> None:
    """Upsert what this instance observed; ``last_seen`` is the database clock."""
    await conn.execute(
        text(
            "INSERT INTO dualwrite_instances (instance_id, migration, role, host, pid, "
            "observed_phase, observed_version, key_versions, last_seen, poll_interval_seconds, "
            "observed_at, longest_request_seconds, recent_p95_ms) VALUES (:i, :m, :role, "
            ":host, :pid, :phase, :ver, :keys, clock_timestamp(), :interval, clock_timestamp(), "
            ":longest, :p95) ON CONFLICT (instance_id, "
            "migration) DO UPDATE SET role = excluded.role, host = excluded.host, pid = "
            "excluded.pid, observed_phase = excluded.observed_phase, observed_version = "
            "excluded.observed_version, key_versions = excluded.key_versions, last_seen = "
            "excluded.last_seen, poll_interval_seconds = excluded.poll_interval_seconds, "
            "observed_at = CASE WHEN dualwrite_instances.observed_version IS NOT DISTINCT FROM "
            "excluded.observed_version THEN dualwrite_instances.observed_at ELSE "
            "excluded.observed_at END, longest_request_seconds = "
            "excluded.longest_request_seconds, recent_p95_ms = excluded.recent_p95_ms"
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
