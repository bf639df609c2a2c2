"""``--defer-indexes``: the blind-index indexes are gone while the encrypt pass writes and back,
valid, when it finishes; a run stopped before that refuses ``read_switch`` until any encrypt
backfill builds them; phases whose searches need the indexes keep them."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.seed import seed_clients
from dualwrite.backfill import Backfiller, BackfillOptions
from dualwrite.config import Settings
from dualwrite.control.facts import gather_facts
from dualwrite.crypto import BlindIndex
from dualwrite.db import connect_raw
from dualwrite.metrics import Metrics
from dualwrite.phases import BackfillMode, Phase
from dualwrite.phases.guards import blind_indexes_built
from dualwrite.state import registry
from tests.integration.backfill_helpers import backfill, cipher_of, move_to

ROWS = 400
BIDX_INDEXES = ("ix_clients_email_bidx", "ix_clients_phone_bidx")
INDEX_STATE = (
    "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE i.indrelid = 'clients'::regclass AND c.relname LIKE '%\\_bidx'"
)


@pytest.fixture
async def seeded(engine: AsyncEngine) -> AsyncEngine:
    await seed_clients(engine, ROWS, workspaces=2)
    return engine


async def bidx_indexes(engine: AsyncEngine) -> dict[str, bool]:
    async with engine.connect() as conn:
        return {str(r[0]): bool(r[1]) for r in await conn.execute(text(INDEX_STATE))}


async def paused(engine: AsyncEngine, value: bool) -> None:
    async with engine.begin() as conn:
        await registry.update_backfill_control(conn, "clients_pii", {"paused": value})


async def until_dropped(engine: AsyncEngine) -> None:
    for _ in range(200):
        if not await bidx_indexes(engine):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the deferred indexes were never dropped")


async def index_guard(engine: AsyncEngine, settings: Settings) -> tuple[bool, str]:
    async with engine.connect() as conn:
        state = await registry.get_migration(conn, "clients_pii")
        facts = await gather_facts(conn, state, settings, keyring_current="v1")
    result = blind_indexes_built(facts)
    return result.passed, result.reason


def worker(engine: AsyncEngine, settings: Settings, **options: object) -> Backfiller:
    opts = BackfillOptions(mode=BackfillMode.ENCRYPT, batch_size=100, **options)  # type: ignore[arg-type]
    return Backfiller(
        engine, "clients_pii", cipher_of(settings), BlindIndex.from_settings(settings), opts
    )


async def test_deferred_indexes_are_gone_while_the_pass_writes_and_valid_after(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    assert await bidx_indexes(seeded) == dict.fromkeys(BIDX_INDEXES, True)  # the expand's
    await paused(seeded, True)  # hold the pass right after the drop
    task = asyncio.create_task(worker(seeded, settings, defer_indexes=True).run())
    await until_dropped(seeded)
    passed, reason = await index_guard(seeded, settings)
    assert not passed and all(name in reason for name in BIDX_INDEXES)
    await paused(seeded, False)
    report = await asyncio.wait_for(task, timeout=60)
    assert report.stopped == "finished" and report.rows_done == ROWS
    assert await bidx_indexes(seeded) == dict.fromkeys(BIDX_INDEXES, True)
    assert (await index_guard(seeded, settings))[0]


async def test_a_stopped_deferred_run_refuses_read_switch_until_a_backfill_builds_them(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    await paused(seeded, True)
    stopped = worker(seeded, settings, defer_indexes=True)
    task = asyncio.create_task(stopped.run())
    await until_dropped(seeded)
    stopped.request_stop()
    assert (await asyncio.wait_for(task, timeout=30)).stopped != "finished"
    await paused(seeded, False)
    assert await bidx_indexes(seeded) == {}
    passed, reason = await index_guard(seeded, settings)
    assert not passed and "dualwrite backfill" in reason and "--defer-indexes" in reason
    # an INVALID leftover (a concurrent build that failed half-way) counts as missing
    raw = await connect_raw(seeded)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await raw.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY ix_clients_email_bidx ON clients (workspace_id)"
            )
    finally:
        await raw.close()
    assert await bidx_indexes(seeded) == {"ix_clients_email_bidx": False}
    assert not (await index_guard(seeded, settings))[0]
    report = await backfill(seeded, settings, "encrypt")  # an ordinary run: no flag
    assert report.stopped == "finished"
    assert await bidx_indexes(seeded) == dict.fromkeys(BIDX_INDEXES, True)
    assert (await index_guard(seeded, settings))[0]


async def test_read_switch_keeps_the_indexes_its_searches_read(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(seeded, settings, "encrypt")
    await move_to(seeded, Phase.READ_SWITCH)
    await paused(seeded, True)
    metrics = Metrics()
    opts = BackfillOptions(mode=BackfillMode.ENCRYPT, defer_indexes=True)
    held = Backfiller(
        seeded, "clients_pii", cipher_of(settings), BlindIndex.from_settings(settings), opts,
        metrics=metrics,
    )  # fmt: skip
    task = asyncio.create_task(held.run())
    throttled = "dualwrite_backfill_throttled"
    for _ in range(200):  # held by the pause: past the point where a deferral drops them
        if metrics.value(throttled, migration="clients_pii", reason="paused") == 1:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the backfill never reached its pass")
    assert await bidx_indexes(seeded) == dict.fromkeys(BIDX_INDEXES, True)
    await paused(seeded, False)
    assert (await asyncio.wait_for(task, timeout=30)).stopped == "finished"
