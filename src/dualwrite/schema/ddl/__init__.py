"""The online-DDL runner every dualwrite schema step goes through.

* :mod:`~dualwrite.schema.ddl.locks` -- PURE: lock conflicts, jittered backoff, how a blocking
  session is named;
* :mod:`~dualwrite.schema.ddl.context` -- the connection and limits of a run: short
  ``lock_timeout`` with bounded retries, ``CONCURRENTLY`` builds under a watchdog;
* :mod:`~dualwrite.schema.ddl.journal` -- progress in ``dualwrite_schema_steps``;
* :mod:`~dualwrite.schema.ddl.step` and one module per kind of step (``columns``, ``not_null``,
  ``trigger``, ``index``, ``constraint``, ``fence``, ``preflight``, ``registration``): each
  knows whether it is done, what to record first, how to start, complete and roll back; every
  identifier is quoted and every catalog lookup goes through the table's quoted, qualified
  name (``to_regclass('"clinic"."patients"')``), so a table outside ``public`` works;
* :mod:`~dualwrite.schema.ddl.plans` -- the steps of ``expand``/``contract`` and their reverses;
* :mod:`~dualwrite.schema.ddl.runner` -- runs a plan, resumable after a kill.

:func:`open_context` builds a context on an asyncpg connection (the Alembic operations in
:mod:`dualwrite.schema.ops` hand over Alembic's own connection in autocommit mode).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.schema.ddl.context import DdlContext, DdlLimits
from dualwrite.schema.ddl.fence import drop_fence, fence_state
from dualwrite.schema.ddl.journal import Journal, ensure_journal
from dualwrite.schema.ddl.preflight import plaintext_dependencies
from dualwrite.schema.ddl.runner import run_steps

__all__ = [
    "DdlContext",
    "DdlLimits",
    "Journal",
    "drop_fence",
    "ensure_journal",
    "fence_state",
    "open_context",
    "plaintext_dependencies",
    "run_steps",
    "session",
]


def open_context(
    conn: asyncpg.Connection,
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    settings: Any = None,
) -> DdlContext:
    """A :class:`DdlContext` on ``conn`` with the limits of ``settings`` (``None``: defaults)."""
    return DdlContext(conn, connect, DdlLimits.from_settings(settings))


@contextlib.asynccontextmanager
async def session(engine: AsyncEngine, settings: Any = None) -> AsyncIterator[DdlContext]:
    """A :class:`DdlContext` on a connection of its own to ``engine``'s database (closed at
    the end): schema steps run outside Alembic, e.g. removing a fence."""
    from dualwrite.db import connect_raw

    conn = await connect_raw(engine)
    try:
        yield open_context(conn, lambda: connect_raw(engine), settings)
    finally:
        await conn.close()
