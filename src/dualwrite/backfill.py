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
connections (``pipeline_depth``, default 2) take turns, so while batch *k* is written, batch
*k+1* is claimed and encrypted (depth 3 did not measure faster on 2 cores: the machine is
already CPU-bound). Commits queue on the checkpoint row, so they land in order. A ``kill -9``
loses at most the uncommitted batches; the next start resumes from the checkpoint, and a run
only ends after a pass from the start, so rows of a batch that never committed are always
picked up.

A run ends only when a final sweep finds nothing it can convert: after a pass that began at
the first key, a count over the whole committed table finds no row left (or a pass from the
start converted nothing and left only rows it cannot convert); rows skipped as locked keep
the count above zero and get another pass. Then ``finished_at`` is stored
(``store.last_backfill_finished_at`` is the guard's fact). Without ``once`` the backfiller
then keeps watching for rows that become stale again.

The phase and the knobs (``backfill_control``) are read before every batch: a phase that no
longer allows the mode stops the run cleanly; ``paused``, ``batch_size``,
``max_rows_per_second`` and ``sleep_ratio`` apply at once. A lost connection (database
restart, terminated backend) is retried with backoff and the run resumes from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite import store
from dualwrite.backfill_progress import NullProgress, Progress, ProgressSink, RateMeter
from dualwrite.backfill_rows import RowCodec
from dualwrite.backfill_sql import BackfillSql, pk_type_sql
from dualwrite.crypto import BlindIndex, FieldCipher
from dualwrite.errors import DatabaseUnavailableError, MissingKeyError, PhaseError
from dualwrite.metrics import Metrics
from dualwrite.phases import BackfillMode, Phase, require_backfill_mode
from dualwrite.throttle import Knobs, probe_health

__all__ = ["BackfillOptions", "BackfillReport", "Backfiller", "connect_raw", "is_connection_error"]

MAX_REPORTED_FAILURES = 1000


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    mode: BackfillMode
    batch_size: int = 1000
    max_rows_per_second: float = 0.0
    sleep_ratio: float = 0.0
    once: bool = True
    dry_run: bool = False
    shard: int = 0
    poll_seconds: float = 2.0
    max_active_backends: int = 0
    max_replication_lag_seconds: float = 0.0
    health_every_seconds: float = 1.0
    retry_for_seconds: float = 300.0  # give up after the database stayed away this long
    pipeline_depth: int = 2  # batches in flight, one connection each (see backfill_pass)


@dataclass(slots=True)
class BackfillReport:
    migration: str
    mode: str
    shard: int
    run_id: str = ""
    rows_done: int = 0  # rows written by this run (all passes, all restarts)
    rows_failed: int = 0  # rows skipped because a value did not decrypt / did not match
    failed_pks: list[str] = field(default_factory=list)  # primary keys only, first 1000
    rows_unchanged: int = 0  # matched but nothing writable (e.g. a value without blind index)
    remaining: int = 0
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    stopped: str = ""  # finished | signal | phase_changed | dry_run

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the database went away (retry), not a bug (raise)."""
    kinds = (
        OSError, ConnectionError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError, asyncpg.exceptions.OperatorInterventionError,
        asyncpg.exceptions.CannotConnectNowError,
    )  # fmt: skip
    if isinstance(exc, kinds):
        return True
    orig = getattr(exc, "orig", None)
    return bool(getattr(exc, "connection_invalidated", False)) or (
        orig is not None and orig is not exc and is_connection_error(orig)
    )


async def connect_raw(engine: AsyncEngine) -> asyncpg.Connection:
    """A plain asyncpg connection to ``engine``'s database (the hot path skips SQLAlchemy)."""
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    return await asyncpg.connect(**kwargs)


@dataclass(slots=True)
class Position:
    run_id: str
    last_key: str | None
    rows_done: int
    rows_failed: int
    started_at: Any


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
        self.progress = progress or NullProgress()
        self.report = BackfillReport(migration, options.mode.value, options.shard)
        self._stop = asyncio.Event()
        self._sql: BackfillSql | None = None
        self._codec: RowCodec | None = None
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
        """Raise unless the mode may run now: unknown migration, wrong phase, missing keys,
        plaintext columns gone. Touches nothing."""
        mode = self.options.mode
        async with self.engine.connect() as conn:
            state = await store.get_migration(conn, self.migration)
            require_backfill_mode(state.phase, mode)
            spec = state.spec
            if mode is not BackfillMode.REKEY and not await store.plaintext_columns_present(
                conn, spec
            ):
                raise PhaseError(
                    f"the plaintext columns of {spec.table} are gone: apply the contract "
                    "revision's downgrade before running the backfill in mode "
                    f"'{mode.value}'"
                )
            pk_type = (
                await conn.execute(text(pk_type_sql()), {"t": spec.table, "c": spec.primary_key})
            ).scalar()
        if pk_type is None:
            raise PhaseError(f"table {spec.table} has no column {spec.primary_key}")
        needs_bidx = mode in (BackfillMode.ENCRYPT, BackfillMode.PURGE) and spec.searchable
        if needs_bidx and self.bidx is None:
            raise MissingKeyError(
                "no blind index key configured: set BLIND_INDEX_KEY (searchable fields need it)"
            )
        self._sql = BackfillSql(
            spec, mode, str(pk_type), current_version=self.cipher.current_version
        )
        self._codec = RowCodec(spec, self.cipher, self.bidx)
        return state.phase

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> BackfillReport:
        """Preflight, then convert until nothing is left (``once``) or until stopped."""
        started = time.monotonic()
        await self.preflight()
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

    async def _run_with_retries(self) -> None:
        delay, down_since = 0.2, None
        while True:
            try:
                await self._work()
                return
            except Exception as exc:
                if not is_connection_error(exc):
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
        assert self._sql is not None
        conn = await connect_raw(self.engine)
        try:
            return int(await conn.fetchval(self._sql.count_remaining()))
        finally:
            await conn.close()

    async def _load_position(self, conn: asyncpg.Connection) -> Position:
        """Resume the unfinished run of this (migration, mode, shard), or start a new one."""
        o = self.options
        row = await conn.fetchrow(
            "SELECT run_id, last_key, rows_done, rows_failed, started_at, finished_at FROM "
            "dualwrite_checkpoints WHERE migration = $1 AND mode = $2 AND shard = $3",
            self.migration, o.mode.value, o.shard,
        )  # fmt: skip
        if row is not None and row["finished_at"] is None and row["run_id"]:
            return Position(row["run_id"], row["last_key"], row["rows_done"],
                            row["rows_failed"], row["started_at"])  # fmt: skip
        return await self._start_run(conn)

    async def _start_run(self, conn: asyncpg.Connection) -> Position:
        """A new run: its checkpoint row starts at zero (batches add their counts to it); the
        previous run's ``finished_at`` stays until the first batch commits."""
        o = self.options
        pos = Position(
            uuid.uuid4().hex, None, 0, 0, await conn.fetchval("SELECT clock_timestamp()")
        )
        await conn.execute(
            "INSERT INTO dualwrite_checkpoints (migration, mode, shard, run_id, last_key, "
            "rows_done, rows_failed, started_at, updated_at) VALUES ($1, $2, $3, $4, NULL, 0, 0, "
            "$5, clock_timestamp()) ON CONFLICT (migration, mode, shard) DO UPDATE SET run_id = "
            "excluded.run_id, last_key = NULL, rows_done = 0, rows_failed = 0, started_at = "
            "excluded.started_at, updated_at = excluded.updated_at",
            self.migration, o.mode.value, o.shard, pos.run_id, pos.started_at,
        )  # fmt: skip
        return pos

    async def _work(self) -> None:
        """Passes over the key space until, after a pass from the start, nothing is left."""
        assert self._sql is not None
        conns = [await connect_raw(self.engine) for _ in range(1 + self.depth)]
        try:
            control, workers = conns[0], tuple(conns[1:])
            pos = await self._load_position(control)
            self.report.run_id = pos.run_id
            from_start, counted = pos.last_key is None, False
            while not self._stop.is_set():
                if not counted:
                    self._remaining = int(await control.fetchval(self._sql.count_remaining()))
                written, stuck, reason = await run_pass(self, control, workers, pos)
                if reason:
                    self.report.stopped = reason
                    return
                counted = False
                if from_start:
                    # After a pass that began at the start, a count of the whole committed
                    # table finding nothing is as strong as another sweep, and much cheaper
                    # (a sequential scan instead of the key-ordered walk). Rows skipped as
                    # locked are still there (counted): they get another sweep.
                    left = int(await control.fetchval(self._sql.count_remaining()))
                    self._remaining, counted = left, True
                    if left == 0 or (written == 0 and left <= stuck):
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

    async def _finish(self, control: asyncpg.Connection, pos: Position, left: int) -> None:
        o = self.options
        await control.execute(
            "INSERT INTO dualwrite_checkpoints (migration, mode, shard, run_id, last_key, "
            "rows_done, rows_failed, started_at, updated_at, finished_at) VALUES ($1, $2, $3, "
            "$4, NULL, $5, $6, $7, clock_timestamp(), clock_timestamp()) ON CONFLICT "
            "(migration, mode, shard) DO UPDATE SET run_id = excluded.run_id, last_key = NULL, "
            "rows_done = excluded.rows_done, rows_failed = excluded.rows_failed, started_at = "
            "excluded.started_at, updated_at = excluded.updated_at, finished_at = "
            "excluded.finished_at",
            self.migration, o.mode.value, o.shard, pos.run_id, pos.rows_done, pos.rows_failed,
            pos.started_at,
        )  # fmt: skip
        self._remaining = left
        self.report.remaining = left
        self.report.stopped = "finished"
        self._state = "finished" if o.once else "watching"
        self.metrics.backfill_remaining.labels(self.migration, o.mode.value).set(left)
        self.progress.update(self.snapshot(self._state), force=True)

    async def _watch(self, control: asyncpg.Connection, stuck: int) -> bool:
        """Poll until rows need converting again; True when asked to stop instead."""
        assert self._sql is not None
        while not await self.sleep(self.options.poll_seconds):
            if int(await control.fetchval(self._sql.count_remaining())) > stuck:
                self._state = "running"
                return False
        return True

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when a stop was requested."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        return self._stop.is_set()

    def snapshot(self, state: str) -> Progress:
        o = self.options
        return Progress(
            self.migration, o.mode.value, o.shard, self.report.rows_done, self.report.rows_failed,
            max(self._remaining, 0), self.rate.rate(), state,
        )  # fmt: skip

    def remaining_left(self, rows: int) -> None:
        """``rows`` rows of the remaining estimate were handled."""
        self._remaining = max(0, self._remaining - rows)
        self.report.remaining = self._remaining
        self.metrics.backfill_remaining.labels(self.migration, self.options.mode.value).set(
            self._remaining
        )

    async def health_problem(self, conn: asyncpg.Connection) -> str | None:
        """Why the database is too busy for the next batch (probed at most every
        ``health_every_seconds``), or ``None``."""
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

    def account(self, pos: Position) -> None:
        """Copy the run's totals into the report (called after every committed batch)."""
        self.report.rows_done = self._done_before + pos.rows_done
        self.report.rows_failed = len(self.failed_seen)


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except Exception:
        conn.terminate()


from dualwrite.backfill_pass import run_pass  # noqa: E402  (the batch pipeline, split for size)
