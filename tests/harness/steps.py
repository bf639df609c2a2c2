"""Stop a dualwrite schema operation at a chosen step, the way a kill or a crash would find it.

The runner records ``started`` in ``dualwrite_schema_steps`` before it changes anything for a
step; :class:`StepBarrier` pre-inserts that row and holds it locked, so a running ``dualwrite
db upgrade`` (or ``finalize``) blocks right there, with every earlier step done and this one
not begun. The test then kills the process (SIGKILL) and :meth:`StepBarrier.release` ends the
orphaned server session, as PostgreSQL does once it notices its client is gone.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.db import connect_raw


class StepBarrier:
    def __init__(self, engine: AsyncEngine, migration: str, operation: str, step: str) -> None:
        self.engine, self.key = engine, (migration, operation, step)
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> StepBarrier:
        self.conn = await connect_raw(self.engine)
        await self.conn.execute(
            "INSERT INTO dualwrite_schema_steps (migration, operation, step, status) "
            "VALUES ($1, $2, $3, 'started') ON CONFLICT DO NOTHING",
            *self.key,
        )
        await self.conn.execute("BEGIN")
        await self.conn.execute(
            "SELECT 1 FROM dualwrite_schema_steps WHERE migration = $1 AND operation = $2 "
            "AND step = $3 FOR UPDATE",
            *self.key,
        )
        return self

    async def reached(
        self, proc: asyncio.subprocess.Process | None = None, timeout: float = 60.0
    ) -> int:
        """Wait until a session blocks on the barrier (failing early if ``proc`` exits);
        its server pid."""
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.returncode is not None:
                _, err = await proc.communicate()
                raise AssertionError(f"exited {proc.returncode} before {self.key}: {err!r}")
            await self.conn.execute("SELECT pg_stat_clear_snapshot()")  # fresh in a transaction
            pid = await self.conn.fetchval(
                "SELECT pid FROM pg_stat_activity "
                "WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid)) LIMIT 1"
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.05)
        sessions = await self.conn.fetch(
            "SELECT pid, state, wait_event_type, wait_event, pg_blocking_pids(pid), "
            "left(query, 80) FROM pg_stat_activity WHERE datname = current_database()"
        )
        raise AssertionError(f"no session reached the barrier at {self.key}: {sessions}")

    async def release(self) -> None:
        """End the sessions blocked on the barrier, then the barrier itself."""
        if self.conn is None or self.conn.is_closed():
            return
        await self.conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )
        await self.conn.execute("ROLLBACK")
        await self.conn.close()

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.release()
