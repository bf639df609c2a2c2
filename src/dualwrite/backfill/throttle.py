"""Backfill throttling: knobs, rate limit, sleep ratio, database health (pure core + one probe).

The knobs start from settings / command-line flags and are overridden, while the backfiller
runs, by ``dualwrite_migrations.backfill_control`` (written by the admin API:
``POST /admin/migrations/{name}/backfill/pause|resume``, ``PATCH .../backfill``), which the
backfiller reads before every batch.

>>> k = Knobs(batch_size=1000, max_rows_per_second=0, sleep_ratio=0.5)
>>> k.merged({"batch_size": 200, "paused": True, "junk": 1})
Knobs(batch_size=200, max_rows_per_second=0, sleep_ratio=0.5, paused=True)
>>> delay_after_batch(k, rows=1000, batch_seconds=0.1, rows_since=1000, seconds_since=0.1)
0.05
>>> delay_after_batch(Knobs(1000, 2000, 0), rows=1000, batch_seconds=0.1, rows_since=1000,
...                   seconds_since=0.1)
0.4
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

MAX_BATCH_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class Knobs:
    """What the backfiller obeys right now (0 = no limit for the rate)."""

    batch_size: int
    max_rows_per_second: float = 0.0
    sleep_ratio: float = 0.0
    paused: bool = False

    def merged(self, control: Mapping[str, Any] | None) -> Knobs:
        """These knobs overridden by the valid keys of a ``backfill_control`` document."""
        if not control:
            return self
        out = self
        size = control.get("batch_size")
        if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_BATCH_SIZE:
            out = replace(out, batch_size=size)
        rate = _number(control.get("max_rows_per_second"))
        if rate is not None:
            out = replace(out, max_rows_per_second=rate)
        ratio = _number(control.get("sleep_ratio"))
        if ratio is not None:
            out = replace(out, sleep_ratio=ratio)
        paused = control.get("paused")
        if isinstance(paused, bool):
            out = replace(out, paused=paused)
        return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def delay_after_batch(
    knobs: Knobs, *, rows: int, batch_seconds: float, rows_since: int, seconds_since: float
) -> float:
    """Seconds to wait before the next batch: the larger of the sleep ratio
    (``ratio x batch time``) and what keeps ``rows_since`` rows over ``seconds_since`` seconds
    under ``max_rows_per_second``."""
    wait = max(0.0, knobs.sleep_ratio * batch_seconds)
    if knobs.max_rows_per_second > 0 and rows_since > 0:
        wait = max(wait, rows_since / knobs.max_rows_per_second - seconds_since)
    return round(wait, 6)


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of what the database health probe saw."""

    active_backends: int
    replication_lag_seconds: float | None

    def problem(self, max_active_backends: int, max_lag_seconds: float) -> str | None:
        """Why the backfiller should hold back, or ``None`` (0 disables a limit).

        >>> Health(12, None).problem(10, 0)
        'active backends 12 > 10'
        >>> Health(3, 4.5).problem(10, 2.0)
        'replication lag 4.5s > 2.0s'
        >>> Health(3, 4.5).problem(0, 0) is None
        True
        """
        if max_active_backends > 0 and self.active_backends > max_active_backends:
            return f"active backends {self.active_backends} > {max_active_backends}"
        lag = self.replication_lag_seconds
        if max_lag_seconds > 0 and lag is not None and lag > max_lag_seconds:
            return f"replication lag {lag:.1f}s > {max_lag_seconds:.1f}s"
        return None


HEALTH_SQL = """
SELECT
  (SELECT count(*) FROM pg_stat_activity
    WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()),
  GREATEST(
    (SELECT max(EXTRACT(EPOCH FROM replay_lag)) FROM pg_stat_replication),
    CASE WHEN pg_is_in_recovery()
         THEN EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()) END)
"""
"""Active client backends (other than the probe) and the worst replication lag in seconds:
``replay_lag`` of the standbys when this is a primary, time since the last replayed
transaction when it is a standby. NULL lag = no replication."""


async def probe_health(conn: Any) -> Health:
    """Run :data:`HEALTH_SQL` on an asyncpg connection."""
    row = await conn.fetchrow(HEALTH_SQL)
    lag = row[1]
    return Health(int(row[0] or 0), None if lag is None else float(lag))
