"""A database ready for ``finalize``: seeded clients, every plaintext purged, phase contract."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from dualwrite.schema import sql as schema_sql


async def purged_in_contract(engine: AsyncEngine, rows: int = 2_000) -> uuid.UUID:
    """Seed ``rows`` clients, purge their plaintext (the trigger told to keep ciphertext), move
    to contract; the id of one client."""
    await seed_clients(engine, rows, workspaces=2)
    nulls = ", ".join(f"{f} = NULL" for f in CLIENTS_PII.field_names)
    async with engine.begin() as conn:
        await conn.execute(text(schema_sql.keep_ciphertext_sql()))
        await conn.execute(text(f"UPDATE clients SET {nulls}"))
        await conn.execute(text("UPDATE dualwrite_migrations SET phase = 'contract'"))
        first = (await conn.execute(text("SELECT min(id::text) FROM clients"))).scalar()
    return uuid.UUID(str(first))
