"""Writers that are not dualwrite, the way they really write: one raw asyncpg transaction each.

:func:`transaction` runs a body in a transaction on a fresh connection and tells what became of
it: ``committed``, ``aborted`` (rolled back on purpose, or it failed before committing),
``refused:<sqlstate>`` (the server refused a statement the model expects it may refuse), or an
``error:...`` the model treats as a failure. When the connection is lost (a PostgreSQL restart,
``pg_terminate_backend``), the outcome is looked up after reconnecting with ``txid_status`` of
the transaction's id, so even a commit whose answer was lost is resolved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.db import connect_raw

EXPECTED = {
    "42703": "undefined_column",  # plaintext columns dropped (finalized)
    "23514": "check_violation",  # the key-change refusal, the finalize fence
}
"""SQLSTATEs of refusals the model expects (the caller decides whether one applies)."""


async def unseen_clears(conn: asyncpg.Connection, key: Any, changes: dict[str, Any]) -> set[str]:
    """The fields ``changes`` sets to NULL whose plaintext is NULL already (the row locked).

    A plaintext-only writer cannot clear a value it cannot see: where the plaintext is NULL
    and the ciphertext holds the value (``contract``, or ``read_switch`` after a rollback until
    decrypt), writing NULL changes nothing the trigger can tell from no change, so the value
    stays (README, "Writers that are not dualwrite"). The model expects exactly that.
    """
    cleared = [f for f, v in changes.items() if v is None]
    if not cleared:
        return set()
    row = await conn.fetchrow(
        f"SELECT {', '.join(cleared)} FROM clients WHERE id = $1 FOR UPDATE", key
    )
    return {f for f in cleared if row is not None and row[f] is None}


SEEN_SQL = (
    "SELECT phase || ' v' || version || CASE WHEN EXISTS (SELECT 1 FROM pg_constraint "
    "WHERE conname = 'dualwrite_clients_purged') THEN ' fenced' ELSE '' END "
    "FROM dualwrite_migrations WHERE name = 'clients_pii'"
)
"""The phase, version and fence a SQL writer's transaction began under (it tags its write)."""


class Rollback(Exception):
    """Raised by a body to roll its transaction back on purpose."""


def _lost(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        return state.startswith(("08", "57"))
    return isinstance(
        exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError | asyncio.TimeoutError
    )


async def _connect(engine: AsyncEngine, patience: float) -> asyncpg.Connection:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            return await connect_raw(engine)
        except Exception as exc:
            if not _lost(exc) or loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _status(engine: AsyncEngine, xid: int, patience: float = 60.0) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while loop.time() < deadline:
        try:
            conn = await _connect(engine, patience)
            try:
                status = await conn.fetchval("SELECT txid_status($1)", xid)
            finally:
                await conn.close()
        except Exception as exc:
            if not _lost(exc):
                raise
            status = "in progress"
        if status in ("committed", "aborted"):
            return str(status)
        await asyncio.sleep(0.1)
    return "unknown"


async def transaction(
    engine: AsyncEngine,
    body: Callable[[asyncpg.Connection], Awaitable[Any]],
    *,
    replica: bool = False,
    patience: float = 30.0,
    seen: list[str] | None = None,
) -> str:
    try:
        conn = await _connect(engine, patience)
    except Exception as exc:
        return f"error:connect:{type(exc).__name__}"
    xid: int | None = None
    try:
        tr = conn.transaction()
        await tr.start()
        xid = int(await conn.fetchval("SELECT txid_current()"))
        if seen is not None:  # what the database said when the writer began (diagnostics)
            seen.append(str(await conn.fetchval(SEEN_SQL)))
        if replica:
            await conn.execute("SET LOCAL session_replication_role = replica")
        try:
            await body(conn)
        except Rollback:
            await tr.rollback()
            return "aborted"
        await tr.commit()
        return "committed"
    except asyncpg.PostgresError as exc:
        state = exc.sqlstate or ""
        if _lost(exc):
            return await _status(engine, xid) if xid is not None else "aborted"
        if state in EXPECTED:
            return f"refused:{state}:{str(exc).splitlines()[0][:100]}"
        return f"error:{state}:{type(exc).__name__}:{str(exc).splitlines()[0][:120]}"
    except Exception as exc:
        if _lost(exc):
            return await _status(engine, xid) if xid is not None else "aborted"
        raise
    finally:
        if not conn.is_closed():
            conn.terminate()
