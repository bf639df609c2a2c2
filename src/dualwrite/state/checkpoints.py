"""Backfill checkpoints: every statement on ``dualwrite_checkpoints``, in one place.

One row per (migration, mode, shard): the run it belongs to, the last key whose batch
committed, the rows done and failed, when the run started and, once a pass found nothing left,
when it finished (``finished_at`` of an ``encrypt`` run is the guards' "backfill finished" fact).

Every function takes either an open SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncConnection`
or a raw ``asyncpg`` connection (the backfiller's hot path); the SQL is written once, with
``$n`` placeholders, and the caller owns the transaction. The batch write of the backfiller
embeds :func:`batch_upsert_sql` in its ``UPDATE`` so the data and the checkpoint commit together.

>>> print(batch_upsert_sql(3)[:60])
INSERT INTO dualwrite_checkpoints (migration, mode, shard, r
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "Checkpoint",
    "batch_upsert_sql",
    "finish_run",
    "get_checkpoint",
    "last_backfill_finished_at",
    "last_finished_at",
    "list_checkpoints",
    "save_checkpoint",
    "set_throttle",
    "start_run",
    "unfinished_runs",
]


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
    # why the run's worker holds back right now (state, reason, wait_seconds, at); None: it
    # does not (or the state tables predate revision 4)
    throttle: Mapping[str, Any] | None = None


_COLUMNS = (
    "migration, mode, shard, run_id, last_key, rows_done, rows_failed, started_at, updated_at, "
    "finished_at"
)
_SELECT = (  # to_jsonb(c): state tables before revision 4 have no throttle column
    f"SELECT {_COLUMNS}, to_jsonb(c) -> 'throttle' AS throttle FROM dualwrite_checkpoints c "
    "WHERE migration = $1"
)
_THROTTLE = (
    "UPDATE dualwrite_checkpoints SET throttle = $4::text::jsonb || jsonb_build_object('at', "
    "clock_timestamp()) WHERE migration = $1 AND mode = $2 AND shard = $3"
)
_INSERT = f"INSERT INTO dualwrite_checkpoints ({_COLUMNS}) VALUES "
_CONFLICT = " ON CONFLICT (migration, mode, shard) DO UPDATE SET "

_SAVE = (
    _INSERT + "($1, $2, $3, $4, $5, $6, $7, $8, clock_timestamp(), $9)" + _CONFLICT
    + "run_id = excluded.run_id, last_key = excluded.last_key, rows_done = excluded.rows_done, "
    "rows_failed = excluded.rows_failed, started_at = excluded.started_at, updated_at = "
    "excluded.updated_at, finished_at = excluded.finished_at"
)  # fmt: skip
_START = (
    _INSERT + "($1, $2, $3, $4, NULL, 0, 0, $5, clock_timestamp(), NULL)" + _CONFLICT
    + "run_id = excluded.run_id, last_key = NULL, rows_done = 0, rows_failed = 0, started_at = "
    "excluded.started_at, updated_at = excluded.updated_at"
)  # fmt: skip
_FINISH = (
    _INSERT + "($1, $2, $3, $4, NULL, $5, $6, $7, clock_timestamp(), clock_timestamp())"
    + _CONFLICT + "run_id = excluded.run_id, last_key = NULL, rows_done = excluded.rows_done, "
    "rows_failed = excluded.rows_failed, started_at = excluded.started_at, updated_at = "
    "excluded.updated_at, finished_at = excluded.finished_at"
)  # fmt: skip
_LAST_FINISHED = (
    "SELECT max(finished_at) FROM dualwrite_checkpoints WHERE migration = $1 AND mode = $2"
)
_UNFINISHED = (
    "SELECT count(*) FROM dualwrite_checkpoints WHERE migration = $1 AND mode = $2 AND "
    "finished_at IS NULL"
)


def batch_upsert_sql(first: int) -> str:
    """The checkpoint half of a backfill batch's write, parameters ``$first`` .. ``$first+7``:
    migration, mode, shard, run_id, last_key, rows_done, rows_failed, started_at.

    Counts are ADDED (deltas), so two batches of one worker can run their ``UPDATE`` at the same
    time on two connections; the checkpoint row's lock makes the later batch wait for the
    earlier one's commit, so ``last_key`` only moves forward.
    """
    casts = ("text", "text", "int", "text", "text", "bigint", "bigint", "timestamptz")
    values = ", ".join(f"${first + i}::{cast}" for i, cast in enumerate(casts))
    return (
        _INSERT + f"({values}, clock_timestamp(), NULL)" + _CONFLICT
        + "run_id = excluded.run_id, last_key = excluded.last_key, rows_done = "
        "dualwrite_checkpoints.rows_done + excluded.rows_done, rows_failed = "
        "dualwrite_checkpoints.rows_failed + excluded.rows_failed, started_at = "
        "excluded.started_at, updated_at = excluded.updated_at, finished_at = NULL"
    )  # fmt: skip


async def _fetch(conn: Any, sql: str, *args: Any) -> Sequence[Mapping[str, Any]]:
    if isinstance(conn, AsyncConnection):
        return [dict(r) for r in (await conn.exec_driver_sql(sql, args)).mappings()]
    return list(await conn.fetch(sql, *args))


async def _execute(conn: Any, sql: str, *args: Any) -> None:
    if isinstance(conn, AsyncConnection):
        await conn.exec_driver_sql(sql, args)
    else:
        await conn.execute(sql, *args)


def _checkpoint(row: Mapping[str, Any]) -> Checkpoint:
    values = {k: row[k] for k in Checkpoint.__slots__}
    if isinstance(values["throttle"], str):  # a raw asyncpg connection has no jsonb codec
        values["throttle"] = json.loads(values["throttle"])
    return Checkpoint(**values)


async def get_checkpoint(conn: Any, migration: str, mode: str, shard: int = 0) -> Checkpoint | None:
    rows = await _fetch(conn, _SELECT + " AND mode = $2 AND shard = $3", migration, mode, shard)
    return _checkpoint(rows[0]) if rows else None


async def list_checkpoints(conn: Any, migration: str) -> list[Checkpoint]:
    """Every backfill checkpoint of ``migration`` (one per mode and shard), by mode and shard."""
    return [
        _checkpoint(r) for r in await _fetch(conn, _SELECT + " ORDER BY mode, shard", migration)
    ]


async def save_checkpoint(conn: Any, cp: Checkpoint) -> None:
    """Upsert a checkpoint (``updated_at`` = now)."""
    await _execute(
        conn, _SAVE, cp.migration, cp.mode, cp.shard, cp.run_id, cp.last_key, cp.rows_done,
        cp.rows_failed, cp.started_at, cp.finished_at,
    )  # fmt: skip


async def set_throttle(
    conn: Any, migration: str, mode: str, shard: int, throttle: Mapping[str, Any] | None
) -> None:
    """Record why the run's worker holds back (``None``: it no longer does), stamped ``at``
    with the database clock. Needs state revision 4 (the caller tolerates its absence)."""
    doc = None if throttle is None else json.dumps(dict(throttle))
    await _execute(conn, _THROTTLE, migration, mode, shard, doc)


async def start_run(
    conn: Any, migration: str, mode: str, shard: int, run_id: str, started_at: datetime
) -> None:
    """A new run: its row starts at zero (batches add their counts to it); the previous run's
    ``finished_at`` stays until the first batch commits."""
    await _execute(conn, _START, migration, mode, shard, run_id, started_at)


async def finish_run(conn: Any, cp: Checkpoint) -> None:
    """Mark ``cp``'s run finished now (a pass found nothing left to convert)."""
    await _execute(
        conn, _FINISH, cp.migration, cp.mode, cp.shard, cp.run_id, cp.rows_done, cp.rows_failed,
        cp.started_at,
    )  # fmt: skip


async def last_finished_at(conn: Any, migration: str, mode: str) -> datetime | None:
    """When a run of ``mode`` last ended with nothing left to convert (any shard)."""
    rows = await _fetch(conn, _LAST_FINISHED, migration, mode)
    value = next(iter(rows[0].values())) if rows else None
    return value if isinstance(value, datetime) else None


async def last_backfill_finished_at(conn: Any, migration: str) -> datetime | None:
    """When an ``encrypt`` run last ended with nothing left to convert (the guard's fact)."""
    return await last_finished_at(conn, migration, "encrypt")


async def unfinished_runs(conn: Any, migration: str, mode: str) -> int:
    """Shards of ``mode`` whose run has begun (or committed a batch since it last finished) and
    not finished: a batch sets ``finished_at`` to NULL, only a pass that found nothing left
    sets it again."""
    rows = await _fetch(conn, _UNFINISHED, migration, mode)
    return int(next(iter(rows[0].values()))) if rows else 0
