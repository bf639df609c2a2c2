"""Lock holders and live-read probes: what "live traffic never waits on DDL" is measured with."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.db import connect_raw


class OpenTransaction:
    """A session with an open transaction that has read ``table`` (holds ACCESS SHARE until it
    ends), like an open request, a report or a forgotten ``psql`` session::

        async with OpenTransaction(engine, "clients") as holder:
            ...  # DDL on clients must wait for holder (or give up and retry)
    """

    def __init__(self, engine: AsyncEngine, table: str, isolation: str = "read committed") -> None:
        self.engine, self.table, self.isolation = engine, table, isolation
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> OpenTransaction:
        self.conn = await connect_raw(self.engine)
        await self.conn.execute(f"BEGIN ISOLATION LEVEL {self.isolation}")
        await self.conn.execute(f"SELECT count(*) FROM {self.table}")
        return self

    async def release(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.execute("ROLLBACK")
            await self.conn.close()

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.release()


class ReadProbe:
    """Runs ``sql`` again and again on its own connection; records the worst latency seen."""

    def __init__(self, engine: AsyncEngine, sql: str, every: float = 0.02) -> None:
        self.engine, self.sql, self.every = engine, sql, every
        self.worst = 0.0
        self.count = 0
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def _run(self) -> None:
        conn = await connect_raw(self.engine)
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    await conn.fetch(self.sql)
                except Exception as exc:
                    self.errors.append(type(exc).__name__)
                self.worst = max(self.worst, time.perf_counter() - started)
                self.count += 1
                await asyncio.sleep(self.every)
        finally:
            await conn.close()

    async def __aenter__(self) -> ReadProbe:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
