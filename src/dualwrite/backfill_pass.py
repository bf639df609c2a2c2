"""One pass of the backfiller over the key space: the batch pipeline.

Batch *k* runs on connection ``k % depth`` as one transaction: claim (``FOR UPDATE SKIP
LOCKED``) -> transform in Python (in chunks, yielding to the event loop so the other
connections' ``UPDATE``/``COMMIT`` proceed meanwhile; one batch at a time, oldest first, so its
write leaves as early as possible) -> one ``UPDATE ... FROM unnest`` + checkpoint upsert (the
upsert waits on the checkpoint row for batch *k-1* to commit) -> commit. Batch *k+1* is claimed
as soon as batch *k*'s last key is known, up to ``depth`` batches in flight.
Knobs, phase and database health are checked before every claim; when the backfiller must
hold back (paused, unhealthy, rate limit) the pipeline drains first, so no row stays locked
while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from dualwrite.backfill_rows import BatchResult, RowCodec, transform
from dualwrite.backfill_sql import BackfillSql
from dualwrite.errors import UnknownMigrationError
from dualwrite.phases import BackfillMode, backfill_mode_allowed
from dualwrite.throttle import Knobs, delay_after_batch

if TYPE_CHECKING:
    from dualwrite.backfill import Backfiller, Position

_CHUNK = 256


@dataclass(slots=True)
class _Done:
    """Totals after a committed batch (the next batch's checkpoint builds on them)."""

    rows_done: int
    rows_failed: int
    result: BatchResult | None = None
    seconds: float = 0.0
    last_key: str | None = None
    new_failed: list[str] | None = None  # primary keys failing for the first time


@dataclass(slots=True)
class _Statements:
    claim_first: Any
    claim: Any
    write: Any


async def _prepare(conn: asyncpg.Connection, sql: BackfillSql) -> _Statements:
    return _Statements(
        await conn.prepare(sql.claim(first=True)),
        await conn.prepare(sql.claim(first=False)),
        await conn.prepare(sql.write()),
    )


async def _transform(
    codec: RowCodec, mode: BackfillMode, rows: Sequence[Any], turn: asyncio.Lock
) -> BatchResult:
    """:func:`transform` in chunks, yielding between them (lets the other batches' network
    I/O proceed); ``turn`` (FIFO) keeps the oldest batch's transform ahead of the others."""
    async with turn:
        return await _transform_chunks(codec, mode, rows)


async def _transform_chunks(
    codec: RowCodec, mode: BackfillMode, rows: Sequence[Any]
) -> BatchResult:
    await asyncio.sleep(0)
    if len(rows) <= _CHUNK:
        return transform(codec, mode, rows)
    out: BatchResult | None = None
    for i in range(0, len(rows), _CHUNK):
        part = transform(codec, mode, rows[i : i + _CHUNK])
        if out is None:
            out = part
        else:
            out.pks += part.pks
            for mine, theirs in zip(out.arrays, part.arrays, strict=True):
                mine += theirs
            out.claimed += part.claimed
            out.written += part.written
            out.failed_pks += part.failed_pks
            out.unchanged += part.unchanged
        await asyncio.sleep(0)
    assert out is not None
    return out


async def _batch(
    bf: Backfiller,
    conn: asyncpg.Connection,
    st: _Statements,
    start_key: str | None,
    size: int,
    key_fut: asyncio.Future[str | None],
    pos: Position,
    turn: asyncio.Lock,
) -> _Done:
    """One batch, one transaction; returns its deltas (the driver adds them up in order)."""
    sql, codec = bf.sql, bf.codec
    started = time.perf_counter()
    tr: Any = None
    try:
        tr = conn.transaction()
        await tr.start()
        if sql.needs_keep_ciphertext:
            await conn.execute(sql.keep_ciphertext())
        rows = await (
            st.claim_first.fetch(size) if start_key is None else st.claim.fetch(start_key, size)
        )
        last_key = str(rows[-1][0]) if rows else None
        key_fut.set_result(last_key)
        if not rows:
            await tr.rollback()
            return _Done(0, 0)
        result = await _transform(codec, sql.mode, rows, turn)
        new_failures = [pk for pk in result.failed_pks if pk not in bf.failed_seen]
        bf.failed_seen.update(new_failures)
        o = bf.options
        # waits (on the checkpoint row) for the previous batch to commit: order is kept
        await st.write.fetchval(
            result.pks, *result.arrays, bf.migration, o.mode.value, o.shard, pos.run_id,
            last_key, result.written, len(new_failures), pos.started_at,
        )  # fmt: skip
        await tr.commit()
        seconds = time.perf_counter() - started
        return _Done(result.written, len(new_failures), result, seconds, last_key, new_failures)
    except BaseException as exc:
        if not key_fut.done():
            if isinstance(exc, asyncio.CancelledError):
                key_fut.cancel()
            else:
                key_fut.set_exception(exc)
        if tr is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(tr.rollback(), timeout=2)
        raise


async def run_pass(
    bf: Backfiller,
    control: asyncpg.Connection,
    conns: tuple[asyncpg.Connection, ...],
    pos: Position,
) -> tuple[int, int, str | None]:
    """Convert from ``pos.last_key`` to the end of the key space.

    Returns ``(rows written, rows matched but not convertible, stop reason or None)``;
    ``pos`` is advanced to the last committed batch.
    """
    o, sql, m = bf.options, bf.sql, bf.metrics
    labels = (bf.migration, o.mode.value)
    stmts = [await _prepare(c, sql) for c in conns]
    read_state = await control.prepare(sql.read_state())
    jobs: deque[asyncio.Task[_Done]] = deque()
    transform_turn = asyncio.Lock()
    last = _Done(0, 0)
    written = stuck = turn = 0
    window_rows, window_start = 0, time.monotonic()
    reason: str | None = None

    def account(done: _Done) -> None:
        nonlocal written, stuck, window_rows, last
        last = done
        res = done.result
        if res is None:
            return
        pos.rows_done += done.rows_done
        pos.rows_failed += done.rows_failed
        pos.last_key = done.last_key
        bf.account(pos)
        written += res.written
        stuck += res.unchanged + len(res.failed_pks)
        window_rows += res.written
        room = 1000 - len(bf.report.failed_pks)
        if room > 0 and done.new_failed:
            bf.report.failed_pks += done.new_failed[:room]
        bf.report.batches += 1
        bf.remaining_left(res.written + len(res.failed_pks) + res.unchanged)
        bf.rate.add(res.written)
        m.backfill_rows.labels(*labels, "done").inc(res.written)
        if res.failed_pks:
            m.backfill_rows.labels(*labels, "failed").inc(len(res.failed_pks))
            bf.progress.event("undecryptable", mode=o.mode.value, primary_keys=res.failed_pks)
        m.backfill_batch_duration.labels(*labels).observe(done.seconds)
        m.backfill_rate.labels(*labels).set(bf.rate.rate())
        bf.progress.update(bf.snapshot("running"))

    async def drain() -> None:
        while jobs:
            account(await jobs.popleft())

    async def hold(why: str, seconds: float) -> bool:
        await drain()
        m.backfill_throttle.labels(bf.migration, why).set(1)
        bf.progress.update(bf.snapshot("paused" if why == "paused" else "throttled"))
        try:
            return await bf.sleep(seconds)
        finally:
            m.backfill_throttle.labels(bf.migration, why).set(0)

    key: str | None = pos.last_key
    try:
        while not bf.stop_requested:
            row = await read_state.fetchrow(bf.migration)
            if row is None:
                raise UnknownMigrationError(f"unknown migration {bf.migration!r}")
            if not backfill_mode_allowed(row[0], o.mode):
                reason = "phase_changed"
                bf.progress.event("stopped", reason=f"phase is now {row[0]}", mode=o.mode.value)
                break
            doc = json.loads(row[1]) if isinstance(row[1], str) else row[1]
            knobs: Knobs = bf.base_knobs.merged(doc)
            if knobs.paused:
                if await hold("paused", min(o.poll_seconds, 0.5)):
                    break
                continue
            problem = await bf.health_problem(control)
            if problem:
                bf.progress.event("throttled", reason=problem)
                if await hold("health", o.health_every_seconds):
                    break
                continue
            if len(jobs) >= len(conns):
                account(await jobs.popleft())
                wait = delay_after_batch(
                    knobs, rows=last.result.written if last.result else 0,
                    batch_seconds=last.seconds, rows_since=window_rows,
                    seconds_since=time.monotonic() - window_start,
                )  # fmt: skip
                if wait > 0.001 and await hold("rate", wait):
                    break
            key_fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            jobs.append(asyncio.create_task(
                _batch(bf, conns[turn], stmts[turn], key, knobs.batch_size, key_fut, pos,
                       transform_turn)
            ))  # fmt: skip
            turn = (turn + 1) % len(conns)
            next_key = await key_fut
            if next_key is None:
                break
            key = next_key
        await drain()
    finally:
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
    return written, stuck, reason
