"""One pass of the backfiller over the key space: the batch pipeline (no accounting of its own).

Batch *k* runs on connection ``k % depth`` as one transaction: claim (``FOR UPDATE SKIP
LOCKED``) -> transform in Python (in chunks, yielding to the event loop so the other
connections' ``UPDATE``/``COMMIT`` proceed meanwhile; one batch at a time, oldest first, so its
write leaves as early as possible) -> one ``UPDATE ... FROM unnest`` + checkpoint upsert (the
upsert waits on the checkpoint row for batch *k-1* to commit) -> commit. Batch *k+1* is claimed
as soon as batch *k*'s last key is known, up to ``depth`` batches in flight.

Fencing: after its write (which may have waited on the checkpoint row or on a live writer's row
lock for a while), every batch re-reads the phase in its own transaction and rolls back unless
the mode is still allowed, so no batch commits under a phase the fleet has left; the pass then
stops (``stopped = "phase_changed"``). A version change whose phase still allows the mode
(``backfill -> read_switch`` for ``encrypt``) lets it continue.

Knobs, phase and database health are checked before every claim; when the backfiller must
hold back (paused, unhealthy, rate limit) the pipeline drains first, so no row stays locked
while it waits.

:func:`run_pass` takes everything it needs in one explicit :class:`PassContext` and returns a
:class:`PassResult`; every committed batch is handed, in commit order, to
``context.on_batch`` as a :class:`BatchDone` -- the worker does the accounting (report, rate,
metrics, progress) there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from dualwrite.backfill.modes import BatchResult, RowCodec, Strategy, transform
from dualwrite.backfill.sql import BackfillSql
from dualwrite.backfill.throttle import Knobs, delay_after_batch
from dualwrite.errors import UnknownMigrationError
from dualwrite.phases import backfill_mode_allowed

__all__ = ["BatchDone", "PassContext", "PassResult", "RunPosition", "run_pass"]

_CHUNK = 256


@dataclass(slots=True)
class RunPosition:
    """Where the current run is: its id, start, last committed key and totals so far."""

    run_id: str
    last_key: str | None
    rows_done: int
    rows_failed: int
    started_at: Any


@dataclass(slots=True)
class BatchDone:
    """One committed batch (``result`` is ``None`` for an empty claim)."""

    result: BatchResult | None = None
    seconds: float = 0.0
    last_key: str | None = None
    new_failed: list[str] = field(default_factory=list)  # primary keys failing for the first time
    fenced: str | None = None  # the phase that refused this batch (rolled back, nothing written)


@dataclass(slots=True)
class PassResult:
    written: int = 0  # rows written by this pass
    stuck: int = 0  # rows matched but not convertible (undecryptable, nothing writable)
    stopped: str | None = None  # "phase_changed" when the phase no longer allows the mode


@dataclass(slots=True)
class PassContext:
    """Everything one pass needs; the callables belong to the worker."""

    migration: str
    shard: int
    sql: BackfillSql
    codec: RowCodec
    position: RunPosition  # advanced to the last committed batch
    base_knobs: Knobs
    failed_seen: set[str]  # primary keys already counted as failed in this run
    stop_requested: Callable[[], bool]
    on_batch: Callable[[BatchDone], None]
    hold: Callable[[str, float], Awaitable[bool]]  # (reason, seconds) -> True when stopped
    health_problem: Callable[[asyncpg.Connection], Awaitable[str | None]]
    on_event: Callable[..., None]  # (name, **fields): progress events
    poll_seconds: float = 2.0
    health_every_seconds: float = 1.0

    @property
    def strategy(self) -> Strategy:
        return self.sql.strategy


@dataclass(slots=True)
class _Statements:
    claim_first: Any
    claim: Any
    write: Any
    state: Any


async def _prepare(conn: asyncpg.Connection, sql: BackfillSql) -> _Statements:
    return _Statements(
        await conn.prepare(sql.claim(first=True)),
        await conn.prepare(sql.claim(first=False)),
        await conn.prepare(sql.write()),
        await conn.prepare(sql.read_state()),
    )


async def _transform(
    codec: RowCodec, how: Strategy, rows: Sequence[Any], turn: asyncio.Lock
) -> BatchResult:
    """:func:`transform` in chunks, yielding between them (lets the other batches' network
    I/O proceed); ``turn`` (FIFO) keeps the oldest batch's transform ahead of the others."""
    async with turn:
        await asyncio.sleep(0)
        out = transform(codec, how, rows[:_CHUNK])
        for i in range(_CHUNK, len(rows), _CHUNK):
            await asyncio.sleep(0)
            out.extend(transform(codec, how, rows[i : i + _CHUNK]))
        return out


async def _batch(
    ctx: PassContext,
    conn: asyncpg.Connection,
    st: _Statements,
    start_key: str | None,
    size: int,
    key_fut: asyncio.Future[str | None],
    turn: asyncio.Lock,
) -> BatchDone:
    """One batch, one transaction; returns its deltas (the driver adds them up in order)."""
    sql, pos = ctx.sql, ctx.position
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
            return BatchDone()
        result = await _transform(ctx.codec, ctx.strategy, rows, turn)
        new_failures = [pk for pk in result.failed_pks if pk not in ctx.failed_seen]
        ctx.failed_seen.update(new_failures)
        # waits (on the checkpoint row) for the previous batch to commit: order is kept
        await st.write.fetchval(
            result.pks, *result.arrays, ctx.migration, sql.mode.value, ctx.shard, pos.run_id,
            last_key, result.written, len(new_failures), pos.started_at,
        )  # fmt: skip
        phase = await st.state.fetchval(ctx.migration)  # fenced: in this very transaction
        if phase is None or not backfill_mode_allowed(phase, sql.mode):
            ctx.failed_seen.difference_update(new_failures)
            await tr.rollback()
            return BatchDone(fenced=str(phase))
        await tr.commit()
        return BatchDone(result, time.perf_counter() - started, last_key, new_failures)
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
    ctx: PassContext, control: asyncpg.Connection, conns: tuple[asyncpg.Connection, ...]
) -> PassResult:
    """Convert from ``ctx.position.last_key`` to the end of the key space."""
    sql, pos, mode = ctx.sql, ctx.position, ctx.sql.mode
    stmts = [await _prepare(c, sql) for c in conns]
    read_state = await control.prepare(sql.read_state())
    jobs: deque[asyncio.Task[BatchDone]] = deque()
    transform_turn = asyncio.Lock()
    out = PassResult()
    last = BatchDone()
    turn = 0
    window_rows, window_start = 0, time.monotonic()

    def committed(done: BatchDone) -> None:
        nonlocal window_rows, last
        if done.fenced is not None and out.stopped is None:
            out.stopped = "phase_changed"
            ctx.on_event("stopped", reason=f"phase is now {done.fenced}", mode=mode.value)
        last = done
        res = done.result
        if res is None:
            return
        pos.rows_done += res.written
        pos.rows_failed += len(done.new_failed)
        pos.last_key = done.last_key
        out.written += res.written
        out.stuck += res.unchanged + len(res.failed_pks)
        window_rows += res.written
        ctx.on_batch(done)

    async def drain() -> None:
        while jobs:
            committed(await jobs.popleft())

    async def hold(why: str, seconds: float) -> bool:
        await drain()
        return await ctx.hold(why, seconds)

    key: str | None = pos.last_key
    try:
        while not ctx.stop_requested() and out.stopped is None:
            row = await read_state.fetchrow(ctx.migration)
            if row is None:
                raise UnknownMigrationError(f"unknown migration {ctx.migration!r}")
            if not backfill_mode_allowed(row[0], mode):
                out.stopped = "phase_changed"
                ctx.on_event("stopped", reason=f"phase is now {row[0]}", mode=mode.value)
                break
            doc = json.loads(row[1]) if isinstance(row[1], str) else row[1]
            knobs: Knobs = ctx.base_knobs.merged(doc)
            if knobs.paused:
                if await hold("paused", min(ctx.poll_seconds, 0.5)):
                    break
                continue
            problem = await ctx.health_problem(control)
            if problem:
                ctx.on_event("throttled", reason=problem)
                if await hold("health", ctx.health_every_seconds):
                    break
                continue
            if len(jobs) >= len(conns):
                committed(await jobs.popleft())
                wait = delay_after_batch(
                    knobs, rows=last.result.written if last.result else 0,
                    batch_seconds=last.seconds, rows_since=window_rows,
                    seconds_since=time.monotonic() - window_start,
                )  # fmt: skip
                if wait > 0.001 and await hold("rate", wait):
                    break
            key_fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            jobs.append(asyncio.create_task(
                _batch(ctx, conns[turn], stmts[turn], key, knobs.batch_size, key_fut,
                       transform_turn)
            ))  # fmt: skip
            turn = (turn + 1) % len(conns)
            next_key = await key_fut
            if next_key is None or out.stopped is not None:
                break
            key = next_key
        await drain()
    finally:
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
    return out
