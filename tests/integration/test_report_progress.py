"""Backfill rate and ETA in the migration report, from real checkpoint rows: over HTTP
(``GET /admin/migrations/{name}``) and in ``dualwrite status``.

The checkpoints are written with SQL at known times, so every figure is exact: 20 rows lack
ciphertext, and the ``encrypt`` run (two shards) did 30 + 10 rows between t0 and t0 + 10 s.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from clients_service.seed import seed_clients
from dualwrite.admin import AdminContext, admin_router
from dualwrite.cli import app as cli_app
from dualwrite.config import Settings
from dualwrite.db import make_engine
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1

NAME = "clients_pii"
AUTH = {"Authorization": "Bearer admin-test-token"}
ROWS = 20

# (mode, shard, rows_done, started_at offset s, updated_at offset s, finished)
CHECKPOINTS = [
    ("encrypt", 0, 30, 0, 10, False),
    ("encrypt", 1, 10, 2, 8, False),  # mode rate: (30 + 10) / (10 - 0) = 4 rows/s
    ("purge", 0, 50, 0, 5, True),  # finished: a rate, but no ETA
    ("decrypt", 0, 0, 0, 10, False),  # rate 0: no ETA
    ("rekey", 0, 7, None, 4, False),  # no start time: nothing computable
]


async def seed_progress(engine: AsyncEngine) -> None:
    await seed_clients(engine, ROWS, workspaces=2, seed=3)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)

    def at(offset: int | None) -> datetime | None:
        return None if offset is None else t0 + timedelta(seconds=offset)

    async with engine.begin() as conn:
        for mode, shard, done, start, update, finished in CHECKPOINTS:
            await conn.execute(
                text(
                    "INSERT INTO dualwrite_checkpoints (migration, mode, shard, rows_done, "
                    "rows_failed, started_at, updated_at, finished_at) VALUES (:m, :mode, "
                    ":shard, :done, 0, :started, :updated, :finished)"
                ),
                {"m": NAME, "mode": mode, "shard": shard, "done": done, "started": at(start),
                 "updated": at(update), "finished": at(update) if finished else None},
            )  # fmt: skip


async def test_admin_report_has_rate_and_eta_per_mode(
    engine: AsyncEngine, settings: Settings
) -> None:
    await seed_progress(engine)
    api = FastAPI()
    api.include_router(admin_router(AdminContext(engine, settings, keyring_current="v1")))
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        r = await client.get(f"/admin/migrations/{NAME}", headers=AUTH)
    assert r.status_code == 200, r.text
    backfill = r.json()["backfill"]
    assert backfill["rows_done"] == {"encrypt": 40, "purge": 50, "decrypt": 0, "rekey": 7}
    assert backfill["remaining"]["encrypt"] == ROWS
    assert backfill["rate_rows_per_s"] == {
        "encrypt": 4.0,
        "purge": 10.0,
        "decrypt": 0.0,
        "rekey": None,
    }
    assert backfill["eta_seconds"] == {
        "encrypt": ROWS / 4.0,
        "purge": None,
        "decrypt": None,
        "rekey": None,
    }


def test_status_shows_rate_and_eta(database_url: URL) -> None:
    async def prepare() -> None:
        engine = make_engine(database_url, pool_size=1)
        try:
            await seed_progress(engine)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    env = {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "ENCRYPTION_KEYS": f"v1={TEST_KEY_V1}",
        "BLIND_INDEX_KEY": TEST_BIDX_KEY,
    }
    runner = CliRunner()
    r = runner.invoke(cli_app, ["status", NAME], env=env)
    assert r.exit_code == 0, r.output
    flat = " ".join(r.stdout.replace("│", " ").split())  # the panel wraps long lines
    assert "encrypt 40 (4 rows/s, ETA 5s)" in flat
    assert "purge 50 (10 rows/s)" in flat and "rekey 7;" in flat, flat
    r = runner.invoke(cli_app, ["status", NAME, "--json"], env=env)
    assert json.loads(r.stdout)["backfill"]["eta_seconds"]["encrypt"] == ROWS / 4.0
