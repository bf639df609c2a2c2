"""The online backfiller: convert every row of a live table, lose no write, resume after a crash.

One :class:`Backfiller` runs one mode (``encrypt``, ``decrypt``, ``rekey``, ``purge``) of one
migration as one worker (``shard``); several workers, in as many processes or machines as
wanted, split the work because every batch is claimed with ``FOR UPDATE SKIP LOCKED``::

    async with open_engine(settings) as engine:
        backfiller = Backfiller(engine, "clients_pii", cipher, bidx,
                                BackfillOptions(mode=BackfillMode.ENCRYPT, batch_size=1000))
        report = await backfiller.run()

How one batch goes (one transaction): claim up to ``batch_size`` rows after the last key that
still match the mode's predicate (locked: a live writer to one of them waits for this batch,
and a row a writer holds is skipped and picked up by a later sweep); encrypt/decrypt in Python;
ONE ``UPDATE ... FROM unnest(...)`` that also upserts the checkpoint; commit. Several
connections (``pipeline_depth``, default 2) take turns (:mod:`dualwrite.backfill.pipeline`);
commits queue on the checkpoint row, so they land in order. A ``kill -9``
loses at most the uncommitted batches; the next start resumes from the checkpoint, and a run
only ends after a pass from the start, so rows of a batch that never committed are always
picked up.

A run ends only when a final sweep finds nothing it can convert: after a pass that began at
the first key, a count over the whole committed table finds no row left (or a pass from the
start converted nothing and left only rows it cannot convert); rows skipped as locked keep
the count above zero and get another pass. Then ``finished_at`` is stored
(``checkpoints.last_backfill_finished_at`` is the guard's fact). Without ``once`` the backfiller
then keeps watching for rows that become stale again.

The phase and the knobs are read before every batch (a phase that no longer allows the mode
stops the run cleanly; knobs apply at once). A lost connection (database restart, terminated
backend) is retried with backoff and the run resumes from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.backfill import admission, indexes
from dualwrite.backfill.latency import latency_guard
from dualwrite.backfill.modes import RowCodec
from dualwrite.backfill.options import MAX_REPORTED_FAILURES, BackfillOptions, BackfillReport
from dualwrite.backfill.pipeline import BatchDone, PassContext, RunPosition, run_pass
from dualwrite.backfill.progress import NullProgress, Progress, ProgressSink, RateMeter
from dualwrite.backfill.sql import BackfillSql
from dualwrite.backfill.throttle import Knobs, probe_health
from dualwrite.crypto import BlindIndex, FieldCipher
from dualwrite.db import connect_raw
from dualwrite.errors import (
    BlindIndexKeyMissingError,
    DatabaseUnavailableError,
    PhaseError,
    is_connection_lost,
)
from dualwrite.logs import log_event
from dualwrite.logs.progress import LoggedProgress
from dualwrite.metrics import Metrics
from dualwrite.phases import BackfillMode, Phase, require_backfill_mode
from dualwrite.schema import inspector
from dualwrite.state import checkpoints, registry

__all__ = ["BackfillOptions", "BackfillReport", "Backfiller"]

log = logging.getLogger("dualwrite.backfill")


class Backfiller:
    """One worker of one mode of one migration (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        migration: str,
        cipher: FieldCipher,
        bidx: BlindIndex | None,
        options: BackfillOptions,
        *,
        metrics: Metrics | None = None,
        progress: ProgressSink | None = None,
    ) -> None:
        self.engine, self.migration, self.options = engine, migration, options
        self.cipher, self.bidx = cipher, bidx
        self.metrics = metrics or Metrics()
        self.progress = LoggedProgress(progress or NullProgress())  # logs pause / resume
        self.report = BackfillReport(migration, options.mode.value, options.shard)
        self._stop = asyncio.Event()
        self._sql: BackfillSql | None = None
        self._codec: RowCodec | None = None
        self._phase = Phase.BACKFILL  # set by run()'s preflight
        self.base_knobs = Knobs(
            options.batch_size, options.max_rows_per_second, options.sleep_ratio
        )
        self.rate = RateMeter()
        self._remaining = 0
        self._next_health = 0.0
        self._health_problem: str | None = None
        self._state = "running"
        self._done_before = 0  # rows of earlier runs of this process (watch mode)
        self.failed_seen: set[str] = set()
        self.latency = latency_guard(migration, options, self.metrics, self.progress.event)

    def request_stop(self) -> None:
        """Finish the batches in flight, checkpoint, and return (SIGTERM / SIGINT)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def depth(self) -> int:
        """Batches in flight (at least 1)."""
        return max(1, self.options.pipeline_depth)

    @property
    def sql(self) -> BackfillSql:
        if self._sql is None:
            raise RuntimeError("preflight() has not run")
        return self._sql

    @property
    def codec(self) -> RowCodec:
        if self._codec is None:
            raise RuntimeError("preflight() has not run")
        return self._codec

    # --- refusals: before touching any data ---------------------------------------------------

    async def preflight(self) -> Phase:
        """Raise unless the mode may run now: unknown migration, wrong phase, a fleet not ready
        for the mode (:mod:`dualwrite.backfill.admission`), missing keys, plaintext columns
        gone. Touches nothing."""
        mode = self.options.mode
        async with self.engine.connect() as conn:
            state = await registry.get_migration(conn, self.migration)
            require_backfill_mode(state.phase, mode)
            current, poll = self.cipher.current_version, self.options.poll_seconds
            await admission.admit(conn, state, mode, current_key=current, poll_interval=poll)
            spec = state.spec
            sql_types = await inspector.column_types(conn, spec.sql_table)
            if mode is not BackfillMode.REKEY and not await inspector.plaintext_columns_present(
                conn, spec
            ):
                raise PhaseError(
                    f"the plaintext columns of {spec.table} are gone: apply the contract "
                    "revision's downgrade before running the backfill in mode "
                    f"'{mode.value}'"
                )
        pk_type = sql_types.get(spec.primary_key)
        if pk_type is None:
            raise PhaseError(f"table {spec.table} has no column {spec.primary_key}")
        sql = BackfillSql(spec, mode, pk_type, current_version=self.cipher.current_version)
        needs_key = spec.searchable or spec.unique_fields
        if sql.strategy.needs_blind_index and needs_key and self.bidx is None:
            raise BlindIndexKeyMissingError()
        self._sql = sql
        self._codec = RowCodec(spec, self.cipher, self.bidx)
        return state.phase

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> BackfillReport:
        """Preflight, then convert until nothing is left (``once``) or until stopped."""
        started = time.monotonic()
        self._phase = await self.preflight()
        o = self.options
        log_event(log, "backfill_started", migration=self.migration, mode=o.mode.value,
                  shard=o.shard, batch_size=o.batch_size, dry_run=o.dry_run)  # fmt: skip
        try:
            if self.options.dry_run:
                self.report.remaining = await self._count()
                self.report.stopped = "dry_run"
                return self.report
            await self._run_with_retries()
            return self.report
        finally:
            self.report.seconds = round(time.monotonic() - started, 3)
            self.progress.update(self.snapshot(self._state), force=True)
            r = self.report
            log_event(log, "backfill_finished", migration=self.migration, mode=o.mode.value,
                      shard=o.shard, rows_done=r.rows_done, rows_failed=r.rows_failed,
                      remaining=r.remaining, stopped=r.stopped, seconds=r.seconds)  # fmt: skip

    async def _run_with_retries(self) -> None:
        delay, down_since = 0.2, None
        while True:
            try:
                await self._work()
                return
            except Exception as exc:
                if not is_connection_lost(exc):
                    raise
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > self.options.retry_for_seconds:
                    raise DatabaseUnavailableError(
                        f"database unreachable for {self.options.retry_for_seconds:.0f}s; "
                        "the checkpoint is saved: run the backfill again to resume"
                    ) from None
                self.report.retries += 1
                self.progress.event("retry", reason=type(exc).__name__, delay_s=round(delay, 2))
                if await self.sleep(delay):
                    return
                delay = min(delay * 2, 5.0)

    async def _count(self) -> int:
        conn = await connect_raw(self.engine)
        try:
            return int(await conn.fetchval(self.sql.count_remaining()))
        finally:
            await conn.close()

    async def _load_position(self, conn: asyncpg.Connection) -> RunPosition:
        """Resume the unfinished run of this (migration, mode, shard), or start a new one."""
        o = self.options
        cp = await checkpoints.get_checkpoint(conn, self.migration, o.mode.value, o.shard)
        if cp is not None and cp.finished_at is None and cp.run_id:
            return RunPosition(cp.run_id, cp.last_key, cp.rows_done, cp.rows_failed, cp.started_at)
        return await self._start_run(conn)

    async def _start_run(self, conn: asyncpg.Connection) -> RunPosition:
        o = self.options
        pos = RunPosition(
            uuid.uuid4().hex, None, 0, 0, await conn.fetchval("SELECT clock_timestamp()")
        )
        await checkpoints.start_run(
            conn, self.migration, o.mode.value, o.shard, pos.run_id, pos.started_at
        )
        return pos

    def _context(self, pos: RunPosition) -> PassContext:
        o = self.options
        return PassContext(
            migration=self.migration, shard=o.shard, sql=self.sql, codec=self.codec,
            position=pos, base_knobs=self.base_knobs, failed_seen=self.failed_seen,
            stop_requested=lambda: self.stop_requested,
            on_batch=lambda done: self._account(pos, done),
            hold=self._hold, health_problem=self.health_problem, on_event=self.progress.event,
            poll_seconds=o.poll_seconds, health_every_seconds=o.health_every_seconds,
        )  # fmt: skip

    async def _work(self) -> None:
        """Passes over the key space until, after a pass from the start, nothing is left."""
        sql = self.sql
        conns = [await connect_raw(self.engine) for _ in range(1 + self.depth)]
        try:
            control, workers = conns[0], tuple(conns[1:])
            pos = await self._load_position(control)
            self.report.run_id = pos.run_id
            opts = self.options
            await indexes.defer_before_pass(control, self.engine, sql.spec, opts, self._phase)
            from_start, counted = pos.last_key is None, False
            while not self._stop.is_set():
                if not counted:
                    self._remaining = int(await control.fetchval(sql.count_remaining()))
                    self._export_counts(int(await control.fetchval(sql.count_rows())))
                result = await run_pass(self._context(pos), control, workers)
                if result.stopped:
                    self.report.stopped = result.stopped
                    return
                written, stuck = result.written, result.stuck
                counted = False
                if from_start:
                    # After a pass that began at the start, a count of the whole committed
                    # table finding nothing is as strong as another sweep, and much cheaper
                    # (a sequential scan instead of the key-ordered walk). Rows skipped as
                    # locked are still there (counted): they get another sweep.
                    left = int(await control.fetchval(sql.count_remaining()))
                    self._remaining, counted = left, True
                    # a mode whose predicate over-matches (decrypt) is done once such a pass
                    # had nothing to write
                    exact = sql.strategy.exact_predicate
                    if left == 0 or (written == 0 and (left <= stuck or not exact)):
                        await self._finish(control, pos, left)
                        if self.options.once or await self._watch(control, stuck):
                            return
                        self._done_before += pos.rows_done
                        pos = await self._start_run(control)
                        self.report.run_id = pos.run_id
                        counted = False
                    elif written == 0 and await self.sleep(min(self.options.poll_seconds, 0.5)):
                        break  # rows held by other transactions: sweep again shortly
                pos.last_key, from_start = None, True
            self.report.stopped = "signal"
        finally:
            for c in conns:
                await _close_quietly(c)

    async def _finish(self, control: asyncpg.Connection, pos: RunPosition, left: int) -> None:
        o = self.options
        await indexes.rebuild_after_pass(control, self.engine, self.sql.spec, o)
        await checkpoints.finish_run(
            control,
            checkpoints.Checkpoint(
                self.migration, o.mode.value, o.shard, pos.run_id, None, pos.rows_done,
                pos.rows_failed, pos.started_at,
            ),
        )  # fmt: skip
        self._remaining = left
        self.report.remaining = left
        self.report.stopped = "finished"
        self._state = "finished" if o.once else "watching"
        self.metrics.backfill_remaining.labels(self.migration, o.mode.value).set(left)
        self.progress.update(self.snapshot(self._state), force=True)

    def _export_counts(self, table_rows: int) -> None:
        """Rows left and rows in the table (coverage = 1 - left / rows) at a pass start."""
        m, mode = self.metrics, self.options.mode.value
        m.backfill_remaining.labels(self.migration, mode).set(self._remaining)
        m.table_rows.labels(self.migration).set(table_rows)
        m.backfill_rows.labels(self.migration, mode, "failed")  # exported at 0 until one fails

    async def _watch(self, control: asyncpg.Connection, stuck: int) -> bool:
        """Poll until rows need converting again; True when asked to stop instead."""
        while not await self.sleep(self.options.poll_seconds):
            if int(await control.fetchval(self.sql.count_remaining())) > stuck:
                self._state = "running"
                return False
        return True

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when a stop was requested."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        return self._stop.is_set()

    def snapshot(self, state: str, reason: str | None = None) -> Progress:
        o = self.options
        return Progress(
            self.migration, o.mode.value, o.shard, self.report.rows_done, self.report.rows_failed,
            max(self._remaining, 0), self.rate.rate(), state, reason,
        )  # fmt: skip

    # --- accounting (the pipeline reports; the worker counts) -----------------------------

    def _account(self, pos: RunPosition, done: BatchDone) -> None:
        """Totals, report, rate, metrics and progress after one committed batch."""
        res = done.result
        assert res is not None
        mode, m, report = self.options.mode.value, self.metrics, self.report
        report.rows_done = self._done_before + pos.rows_done
        report.rows_failed = len(self.failed_seen)
        room = MAX_REPORTED_FAILURES - len(report.failed_pks)
        if room > 0 and done.new_failed:
            report.failed_pks += done.new_failed[:room]
        report.batches += 1
        self._remaining = max(
            0, self._remaining - (res.written + len(res.failed_pks) + res.unchanged)
        )
        report.remaining = self._remaining
        m.backfill_remaining.labels(self.migration, mode).set(self._remaining)
        self.rate.add(res.written)
        m.backfill_rows.labels(self.migration, mode, "done").inc(res.written)
        if res.failed_pks:
            m.backfill_rows.labels(self.migration, mode, "failed").inc(len(res.failed_pks))
            self.progress.event("undecryptable", mode=mode, primary_keys=res.failed_pks)
        m.backfill_batch_duration.labels(self.migration, mode).observe(done.seconds)
        m.backfill_rate.labels(self.migration, mode).set(self.rate.rate())
        self.progress.update(self.snapshot("running"))

    async def _hold(self, why: str, seconds: float) -> bool:
        """Wait ``seconds`` holding back for ``why`` (paused, health, rate); True when stopped."""
        gauge = self.metrics.backfill_throttle.labels(self.migration, why)
        gauge.set(1)
        reason = {"latency": self.latency.reason, "health": self._health_problem}.get(why)
        self.progress.update(self.snapshot("paused" if why == "paused" else "throttled", reason))
        try:
            return await self.sleep(seconds)
        finally:
            gauge.set(0)

    async def health_problem(self, conn: asyncpg.Connection) -> str | None:
        """Why the database is too busy for the next batch (probed at most every
        ``health_every_seconds``), or ``None``; first holds for the latency budget."""
        await self.latency.before_batch(conn, self._hold)
        o = self.options
        if o.max_active_backends <= 0 and o.max_replication_lag_seconds <= 0:
            return None
        now = time.monotonic()
        if now < self._next_health:
            return self._health_problem
        self._next_health = now + o.health_every_seconds
        health = await probe_health(conn)
        self._health_problem = health.problem(o.max_active_backends, o.max_replication_lag_seconds)
        return self._health_problem


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except Exception:
        conn.terminate()
