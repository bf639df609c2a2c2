"""Alembic environment (async).

Two ways in:
- ``dualwrite db ...`` (and the tests) hand over an open connection in
  ``config.attributes["connection"]``; nothing is parsed from a URL string.
- plain ``alembic upgrade 0003`` builds the engine from the dualwrite settings
  (``DATABASE_URL`` or the embedded PostgreSQL).

Every revision runs with ``lock_timeout`` / ``statement_timeout`` set, so DDL never queues
behind live traffic for long.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from dualwrite.schema.migrate import configure_ddl_timeouts

config = context.config


def _run(connection: Connection) -> None:
    configure_ddl_timeouts(connection, config.attributes.get("settings"))
    context.configure(
        connection=connection,
        target_metadata=None,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine() -> None:
    from dualwrite.config import load_settings
    from dualwrite.db import make_engine, resolve_url

    settings = load_settings()
    config.attributes["settings"] = settings
    engine = make_engine(resolve_url(settings), settings)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("dualwrite migrations run online only (they need a live database)")

_connection = config.attributes.get("connection")
if _connection is None:
    asyncio.run(_run_with_own_engine())
else:
    _run(_connection)
