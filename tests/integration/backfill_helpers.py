"""Helpers shared by the backfill / verify tests (real PostgreSQL, real keys)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from dualwrite.backfill import Backfiller, BackfillOptions, BackfillReport
from dualwrite.config import Settings
from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
from dualwrite.metrics import Metrics
from dualwrite.phases import BackfillMode, Phase
from dualwrite.state import registry

FIELDS = CLIENTS_PII.field_names
PLAIN_COLUMNS = ", ".join(FIELDS)


async def move_to(engine: AsyncEngine, *targets: Phase) -> None:
    """Walk the migration through ``targets`` with the store's compare-and-swap."""
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, "clients_pii")
        for target in targets:
            state = await registry.compare_and_swap_phase(conn, state.name, state.version, target)


def cipher_of(settings: Settings) -> FieldCipher:
    return FieldCipher(load_keyring(settings))


async def backfill(
    engine: AsyncEngine,
    settings: Settings,
    mode: BackfillMode | str,
    *,
    metrics: Metrics | None = None,
    **options: Any,
) -> BackfillReport:
    opts = BackfillOptions(mode=BackfillMode.parse(mode), **{"batch_size": 100, **options})
    worker = Backfiller(
        engine, "clients_pii", cipher_of(settings), BlindIndex.from_settings(settings), opts,
        metrics=metrics,
    )  # fmt: skip
    return await worker.run()


async def plaintexts(engine: AsyncEngine) -> dict[str, tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT id, {PLAIN_COLUMNS} FROM clients"))
        return {str(r[0]): tuple(r[1:]) for r in rows}


async def table_snapshot(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text("SELECT * FROM clients ORDER BY id"))]


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()
