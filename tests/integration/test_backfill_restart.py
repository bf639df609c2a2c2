"""The backfiller survives a real PostgreSQL restart in the middle of a run.

The test gets its own embedded server (its own temporary folder), so stopping it cannot disturb
the session's shared server. While the backfiller converts small, rate-limited batches, the
server is stopped with ``pg_ctl stop -m fast`` (open connections are cut, the batch in flight
is rolled back), kept down for a moment, and started again from its ``postmaster.opts`` (same
socket). The backfiller must retry with backoff, resume from its checkpoint and finish with
every row covered, each row counted once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import URL

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from dualwrite.crypto import BlindIndex
from dualwrite.db import make_engine
from dualwrite.phases import Phase
from dualwrite.schema import inspector
from dualwrite.state import checkpoints
from dualwrite.testing import DatabaseFactory
from dualwrite.verify import verify
from tests.conftest import make_settings
from tests.harness.server import own_server as _own_server
from tests.harness.server import restart as _restart
from tests.integration.backfill_helpers import backfill, cipher_of, move_to

ROWS = 400


@pytest.fixture
async def own_server() -> AsyncIterator[DatabaseFactory]:
    """An embedded PostgreSQL only this test uses (stopped and deleted afterwards)."""
    async with _own_server() as factory:
        yield factory


async def _fetchval(url: URL, sql: str) -> object:
    conn = await asyncpg.connect(
        host=url.query["host"], port=int(str(url.query["port"])), user=url.username,
        database=url.database,
    )  # fmt: skip
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _rows_done(url: URL) -> int:
    done = await _fetchval(url, "SELECT coalesce(sum(rows_done), 0) FROM dualwrite_checkpoints")
    return int(str(done))


async def test_database_restart_mid_run_is_retried_and_finishes(
    own_server: DatabaseFactory,
) -> None:
    url = await own_server.create("0003")
    engine = make_engine(url, pool_size=2)
    try:
        await seed_clients(engine, ROWS, workspaces=3)
        await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
        settings = make_settings(url)
        task = asyncio.create_task(
            backfill(engine, settings, "encrypt", batch_size=20, max_rows_per_second=400)
        )
        while await _rows_done(url) < 60:  # some batches are committed: the run is under way
            assert not task.done(), "the backfill ended before the restart"
            await asyncio.sleep(0.05)
        assert own_server.folder is not None
        booted = await _fetchval(url, "SELECT pg_postmaster_start_time()")
        await asyncio.to_thread(_restart, own_server.folder / "pg", 0.5)
        assert await _fetchval(url, "SELECT pg_postmaster_start_time()") != booted
        report = await asyncio.wait_for(task, timeout=60)
        assert report.stopped == "finished" and report.retries >= 1
        assert report.rows_done == ROWS  # committed batches are not redone, none is lost
        await engine.dispose()  # the pool's connections died with the server
        async with engine.connect() as conn:
            coverage = await inspector.coverage(conn, CLIENTS_PII)
            checkpoint = await checkpoints.get_checkpoint(conn, "clients_pii", "encrypt")
        assert coverage.rows_missing_ciphertext == 0
        assert checkpoint is not None and checkpoint.rows_done == ROWS
        result = await verify(
            engine, CLIENTS_PII, cipher_of(settings), BlindIndex.from_settings(settings)
        )
        assert result.ok and result.checked == ROWS
    finally:
        await engine.dispose()
