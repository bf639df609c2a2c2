"""Before a rewrite: no snapshot or replication slot may predate the purge.

``VACUUM FULL`` and ``pg_repack`` copy every tuple some snapshot may still see -- including the
"recently dead" versions the purge left, with their plaintext -- so a rewrite only helps once
every transaction older than it has ended. :func:`wait_for_horizon` takes the next transaction
id when it starts and waits (up to a deadline) until no backend's ``xmin``/``xid`` and no
slot's ``xmin`` is older, naming what it waits for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

from dualwrite.schema.ddl.locks import Blocker, describe_blockers

__all__ = ["wait_for_horizon"]

_NEXT_XID = "SELECT (pg_snapshot_xmax(pg_current_snapshot())::text::bigint % 4294967296)::text"
_OLD_BACKENDS = """
SELECT pid, state, extract(epoch FROM clock_timestamp() - xact_start)::float8,
       nullif(application_name, '')
FROM pg_stat_activity
WHERE pid <> pg_backend_pid()
  AND (datname = current_database() OR backend_type = 'walsender')
  AND ((backend_xmin IS NOT NULL AND age(backend_xmin) > age($1::xid))
       OR (backend_xid IS NOT NULL AND age(backend_xid) > age($1::xid)))
ORDER BY xact_start NULLS LAST
"""
_OLD_SLOTS = (
    "SELECT slot_name FROM pg_replication_slots WHERE xmin IS NOT NULL "
    "AND age(xmin) > age($1::xid) ORDER BY slot_name"
)


async def wait_for_horizon(
    conn: asyncpg.Connection, deadline_seconds: float, say: Callable[[str], None]
) -> str | None:
    """``None`` once nothing predates the start; else why not, after ``deadline_seconds``."""
    horizon = int(await conn.fetchval(_NEXT_XID))
    deadline = time.monotonic() + deadline_seconds
    said = 0.0
    while True:
        rows = await conn.fetch(_OLD_BACKENDS, horizon)
        slots = [str(r[0]) for r in await conn.fetch(_OLD_SLOTS, horizon)]
        if not rows and not slots:
            return None
        parts = []
        if rows:
            blockers = [Blocker(int(r[0]), r[1], r[2], r[3]) for r in rows]
            parts.append(f"sessions older than the purge: {describe_blockers(blockers)}")
        if slots:
            parts.append(f"replication slots holding an older xmin: {', '.join(slots)}")
        why = "; ".join(parts)
        now = time.monotonic()
        if now >= deadline:
            return why
        if now - said >= 5.0:
            say(f"rewrite waits for {why}")
            said = now
        await asyncio.sleep(0.25)
