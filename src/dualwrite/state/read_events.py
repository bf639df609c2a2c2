"""Read events the API instances count: shadow mismatches, read fallbacks, decrypt failures.

Stored per (migration, state version, kind) in ``dualwrite_read_events``, so the guards count
only what happened since the current phase was entered.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "add_read_events",
    "read_event_totals",
]


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
