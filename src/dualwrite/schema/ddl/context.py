"""The one explicit context every schema step runs in: its connection, its limits, its log.

Two ways to run SQL, chosen by the lock a statement needs:

* :meth:`DdlContext.locked` -- a short transaction of its own under ``SET LOCAL lock_timeout``
  (default 500 ms): if the lock is not granted in time PostgreSQL cancels the wait, so live
  queries queued behind it move on; the step is retried after a jittered pause, each wait
  naming who holds the lock (pid, state, transaction age), until a total budget is spent;
* :meth:`DdlContext.concurrently` -- ``CREATE/DROP INDEX CONCURRENTLY`` with no lock or
  statement timeout (it blocks no one while it waits), under a watchdog on a second connection
  that names what it waits for and cancels it at a deadline.

The connection is in autocommit mode between steps (never inside Alembic's per-migration
transaction, where one cancel would abort every earlier step and a savepoint retry would keep
their locks while traffic queues behind them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from dualwrite.errors import SchemaStepError
from dualwrite.schema.ddl.locks import Blocker, backoff_seconds, conflicting, describe_blockers

__all__ = ["DdlContext", "DdlLimits"]

log = logging.getLogger("dualwrite.schema.ddl")

T = TypeVar("T")

_RETRYABLE = (asyncpg.exceptions.LockNotAvailableError, asyncpg.exceptions.DeadlockDetectedError)

_HOLDERS_SQL = """
SELECT DISTINCT a.pid, a.state, extract(epoch FROM clock_timestamp() - a.xact_start)::float8,
       coalesce(nullif(a.application_name, ''), a.backend_type), a.xact_start, a.backend_type
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = to_regclass($1) AND l.granted
  AND l.pid <> pg_backend_pid() AND l.mode = ANY($2::text[])
ORDER BY a.xact_start NULLS LAST
"""

_SESSIONS_SQL = """
SELECT pid, state, extract(epoch FROM clock_timestamp() - xact_start)::float8,
       nullif(application_name, '')
FROM pg_stat_activity WHERE pid = ANY($1::int[]) ORDER BY xact_start NULLS LAST
"""

_WAITING_SQL = """
SELECT a.wait_event_type, a.wait_event, p.phase, pg_blocking_pids(a.pid)
FROM pg_stat_activity a LEFT JOIN pg_stat_progress_create_index p ON p.pid = a.pid
WHERE a.pid = $1
"""


@dataclass(frozen=True, slots=True)
class DdlLimits:
    """How long a step may wait: ``lock_timeout_ms`` per attempt, ``retry_budget_seconds`` in
    all for one step, ``concurrent_deadline_seconds`` for a concurrent index build,
    ``statement_timeout_ms`` for a statement once it holds its lock."""

    lock_timeout_ms: int = 500
    retry_budget_seconds: float = 120.0
    concurrent_deadline_seconds: float = 1800.0
    statement_timeout_ms: int = 600_000
    watchdog_interval_seconds: float = 1.0

    @classmethod
    def from_settings(cls, settings: Any) -> DdlLimits:
        if settings is None:
            return cls()
        return cls(
            lock_timeout_ms=settings.ddl_lock_timeout_ms,
            retry_budget_seconds=settings.ddl_retry_budget_seconds,
            concurrent_deadline_seconds=settings.ddl_concurrent_deadline_seconds,
            statement_timeout_ms=settings.ddl_statement_timeout_ms,
        )


def _blockers(rows: list[asyncpg.Record]) -> list[Blocker]:
    return [Blocker(int(r[0]), r[1], r[2], r[3]) for r in rows]


@dataclass
class DdlContext:
    """Connection, limits and progress log of one run of schema steps.

    ``connect`` opens a second connection to the same database (the watchdog's).
    """

    conn: asyncpg.Connection
    connect: Callable[[], Awaitable[asyncpg.Connection]]
    limits: DdlLimits = field(default_factory=DdlLimits)
    say: Callable[[str], None] = log.info
    warn: Callable[[str], None] = log.warning
    rng: random.Random = field(default_factory=random.Random)
    _lock_ms: int = 0  # this attempt's lock_timeout (0: the configured one)

    def lock_timeout_ms(self) -> int:
        return self._lock_ms or int(self.limits.lock_timeout_ms)

    async def locked(
        self, what: str, table: str, mode: str, body: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """Run ``body`` in its own transaction under the short lock timeout, retrying with
        jittered backoff while another session holds a lock conflicting with ``mode`` on
        ``table``; :class:`SchemaStepError` (naming the holders) once the budget is spent."""

        async def attempt(conn: asyncpg.Connection) -> T:
            async with conn.transaction():
                await conn.execute(
                    f"SET LOCAL lock_timeout = {self.lock_timeout_ms()}; "
                    f"SET LOCAL statement_timeout = {int(self.limits.statement_timeout_ms)}"
                )
                return await body(conn)

        return await self._retrying(what, table, mode, attempt)

    async def _retrying(
        self,
        what: str,
        table: str,
        mode: str,
        attempt: Callable[[asyncpg.Connection], Awaitable[T]],
    ) -> T:
        started = time.monotonic()
        tries = 0
        self._lock_ms = 0
        while True:
            try:
                done = await attempt(self.conn)
                self._lock_ms = 0
                return done
            except _RETRYABLE:
                holders, autovacuum = await self._holders(table, mode)
                self._lock_ms = await self._autovacuum_wait_ms() if autovacuum else 0
                elapsed = time.monotonic() - started
                pause = backoff_seconds(tries, jitter=self.rng.uniform(0.5, 1.0))
                if elapsed + pause > self.limits.retry_budget_seconds:
                    raise SchemaStepError(
                        f"{what}: gave up after {elapsed:.0f} s and {tries + 1} attempts "
                        f"waiting for a {mode} lock on {table}, held by "
                        f"{describe_blockers(holders)}; end that session (or wait), then run "
                        "the same command again: it resumes here"
                    ) from None
                self.warn(
                    f"{what}: {mode} lock on {table} not granted within "
                    f"{self.limits.lock_timeout_ms} ms (held by {describe_blockers(holders)}); "
                    f"attempt {tries + 1}, retrying in {pause:.1f} s"
                    + (
                        " (autovacuum: waiting deadlock_timeout so it yields)"
                        if self._lock_ms
                        else ""
                    )
                )
                await asyncio.sleep(pause)
                tries += 1

    async def outside_transaction(
        self, what: str, table: str, mode: str, statement: str, statement_timeout_ms: int
    ) -> float:
        """Run ``statement`` (``VACUUM FULL``: no transaction block) under the short lock
        timeout and ``statement_timeout_ms``, retrying like :meth:`locked`; the seconds the
        successful attempt took (the lock is held for at most that long)."""

        async def attempt(conn: asyncpg.Connection) -> float:
            started = time.perf_counter()
            await conn.execute(statement)
            return time.perf_counter() - started

        old = await self.conn.fetchrow(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        )
        assert old is not None
        await self.conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")

        async def timed(conn: asyncpg.Connection) -> float:
            await conn.execute(f"SET lock_timeout = {self.lock_timeout_ms()}")
            return await attempt(conn)

        try:
            return await self._retrying(what, table, mode, timed)
        finally:
            await self.conn.execute(
                "SELECT set_config('lock_timeout', $1, false), "
                "set_config('statement_timeout', $2, false)",
                old[0],
                old[1],
            )

    async def holders(self, table: str, mode: str) -> list[Blocker]:
        """Sessions holding a lock on ``table`` that conflicts with ``mode``."""
        return (await self._holders(table, mode))[0]

    async def _holders(self, table: str, mode: str) -> tuple[list[Blocker], bool]:
        """The holders, and whether they are all autovacuum workers."""
        rows = await self.conn.fetch(_HOLDERS_SQL, table, sorted(conflicting(mode)))
        only_autovacuum = bool(rows) and all(r[5] == "autovacuum worker" for r in rows)
        return _blockers(rows), only_autovacuum

    async def _autovacuum_wait_ms(self) -> int:
        """PostgreSQL cancels an autovacuum worker that blocks a lock request only after the
        request has waited ``deadlock_timeout``: a shorter lock timeout would give up first,
        every time. The next attempt waits ``deadlock_timeout`` + 200 ms (capped at 2 s)."""
        value = await self.conn.fetchval(
            "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"
        )
        return max(int(self.limits.lock_timeout_ms), min(int(value or 1000) + 200, 2000))

    async def concurrently(self, what: str, statement: str) -> None:
        """Run a ``... CONCURRENTLY`` statement with no lock or statement timeout, under the
        watchdog; :class:`SchemaStepError` once the deadline passes (the statement is
        cancelled; an index it leaves INVALID is dropped and rebuilt by the next run)."""
        old = await self.conn.fetchrow(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        )
        assert old is not None
        await self.conn.execute("SET lock_timeout = 0; SET statement_timeout = 0")
        watcher = await self.connect()
        pid = self.conn.get_server_pid()
        task = asyncio.ensure_future(self.conn.execute(statement))
        waiting = "nothing"
        try:
            deadline = time.monotonic() + self.limits.concurrent_deadline_seconds
            last_said = float("-inf")  # say the first wait at once, then every 5 checks
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=self.limits.watchdog_interval_seconds)
                if done:
                    break
                waiting = await self._waiting_for(watcher, pid)
                now = time.monotonic()
                if now >= deadline:
                    await watcher.execute("SELECT pg_cancel_backend($1)", pid)
                    await asyncio.wait({task})
                    raise SchemaStepError(
                        f"{what}: gave up after {self.limits.concurrent_deadline_seconds:.0f} s "
                        f"waiting for {waiting}; run the same command again once it ends "
                        "(an INVALID leftover index is dropped and rebuilt)"
                    )
                if now - last_said >= 5 * self.limits.watchdog_interval_seconds:
                    self.warn(f"{what}: waiting for {waiting}")
                    last_said = now
            task.result()
        finally:
            if not task.done():
                task.cancel()
            await watcher.close()
            await self.conn.execute(
                "SELECT set_config('lock_timeout', $1, false), "
                "set_config('statement_timeout', $2, false)",
                old[0],
                old[1],
            )

    async def _waiting_for(self, watcher: asyncpg.Connection, pid: int) -> str:
        row = await watcher.fetchrow(_WAITING_SQL, pid)
        if row is None:
            return "its backend to report"
        event = f"{row[0]}:{row[1]}" if row[0] else "nothing (running)"
        phase = f", phase '{row[2]}'" if row[2] else ""
        pids = list(row[3] or [])
        if not pids:
            return f"{event}{phase}"
        holders = _blockers(await watcher.fetch(_SESSIONS_SQL, pids))
        return f"{describe_blockers(holders)} ({event}{phase})"
