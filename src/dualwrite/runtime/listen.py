"""The watcher's ``LISTEN dualwrite_phase`` connection: a committed transition's ``NOTIFY``
sets the watcher's wake event, so its poll loop refreshes at once.

The connection is a dedicated asyncpg one (outside the pool); :meth:`Listener.ensure` re-opens
it when it was lost (and wakes the poll loop, since notifications may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.db import connect_raw
from dualwrite.schema import sql as schema_sql

__all__ = ["Listener"]


class Listener:
    """One LISTEN connection; ``outage(loop, exc_or_None)`` reports failures and recoveries."""

    def __init__(
        self,
        engine: AsyncEngine,
        wake: asyncio.Event,
        outage: Callable[[str, BaseException | None], None],
        timeout: float = 5.0,
    ) -> None:
        self.engine = engine
        self.wake = wake
        self.outage = outage
        self.timeout = timeout
        self._conn: asyncpg.Connection | None = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.wake.set()

    async def ensure(self, *, quiet: bool = False) -> None:
        """Listen, unless already listening; failures are reported, never raised."""
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return
        await self.close()
        try:
            async with asyncio.timeout(self.timeout):
                conn = await connect_raw(self.engine)
                await conn.add_listener(schema_sql.NOTIFY_CHANNEL, self._on_notify)
            self._conn = conn
            self.outage("listen", None)
            if not quiet:
                self.wake.set()  # changes may have been missed while not listening
        except Exception as exc:
            self.outage("listen", exc)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                if not conn.is_closed():
                    await conn.remove_listener(schema_sql.NOTIFY_CHANNEL, self._on_notify)
                await conn.close()
        if not conn.is_closed():
            conn.terminate()
