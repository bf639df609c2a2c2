"""A searchable value that normalises to nothing (a phone written "n/a") still gets covered:
writers store the empty blind-index marker, so the coverage guard can reach 100%."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from dualwrite.config import Settings
from dualwrite.crypto import BlindIndex
from dualwrite.phases import Phase
from dualwrite.schema import inspector
from dualwrite.verify import verify
from tests.integration.backfill_helpers import backfill, cipher_of, move_to


async def test_unindexable_phone_counts_as_covered_and_matches_no_search(
    engine: AsyncEngine, settings: Settings
) -> None:
    ws = uuid.uuid4()
    async with engine.begin() as conn:
        for phone in ("n/a", "+1 555 010 2000"):
            await conn.execute(
                text(
                    "INSERT INTO clients (id, workspace_id, first_name, last_name, email, phone) "
                    "VALUES (:id, :ws, 'Ana', 'Abara', 'ana@example.org', :phone)"
                ),
                {"id": uuid.uuid4(), "ws": ws, "phone": phone},
            )
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    report = await backfill(engine, settings, "encrypt")
    assert report.rows_done == 2

    async with engine.connect() as conn:
        cov = await inspector.coverage(conn, CLIENTS_PII)
        stored = (
            await conn.execute(text("SELECT phone_bidx FROM clients WHERE phone = 'n/a'"))
        ).scalar_one()
    assert cov.rows_missing_ciphertext == 0 and cov.percent == 100.0
    assert stored == b""  # the marker, not NULL

    bidx = BlindIndex.from_settings(settings)
    assert bidx.compute("n/a", "phone") is None  # a search can never produce the marker
    result = await verify(engine, CLIENTS_PII, cipher_of(settings), bidx, full=True)
    assert result.ok, result.as_dict()
