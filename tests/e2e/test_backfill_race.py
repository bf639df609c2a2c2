"""The race test: live writers (dual-write AND legacy plaintext-only) while the backfiller runs
as a separate process that is killed with SIGKILL three times and restarted.

At the end: coverage 100%, a full verification finds 0 problems, and every row's plaintext is
the last value its writer wrote (no write lost, no stale ciphertext left behind).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import uuid
from typing import Any

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from dualwrite.config import Settings
from dualwrite.crypto import BlindIndex
from dualwrite.phases import Phase, behaviour
from dualwrite.runtime.codec import FieldCodec
from dualwrite.schema import inspector
from dualwrite.state import checkpoints
from dualwrite.verify import verify
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1
from tests.integration.backfill_helpers import FIELDS, cipher_of, move_to, plaintexts

pytestmark = pytest.mark.e2e

ROWS = 2000
KILLS = 3


def _env(database_url: URL) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url.render_as_string(hide_password=False),
        ENCRYPTION_KEYS=f"v1={TEST_KEY_V1}",
        ENCRYPTION_CURRENT_KEY="v1",
        BLIND_INDEX_KEY=TEST_BIDX_KEY,
        POLL_INTERVAL_SECONDS="0.2",
    )
    env.pop("ENCRYPTION_KEY", None)
    return env


async def _start_backfiller(env: dict[str, str], *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dualwrite.cli", "backfill", "--migration", "clients_pii",
        "--mode", "encrypt", "--batch-size", "40", "--json", *extra,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _wait_for_progress(
    engine: AsyncEngine, beyond: int, proc: asyncio.subprocess.Process
) -> None:
    """Until the worker's checkpoint counts more than ``beyond`` rows (it started working)."""
    for _ in range(600):
        async with engine.connect() as conn:
            cp = await checkpoints.get_checkpoint(conn, "clients_pii", "encrypt")
        if cp is not None and cp.rows_done > beyond:
            return
        assert proc.returncode is None, "the backfiller exited early"
        await asyncio.sleep(0.05)
    raise AssertionError("the backfiller made no progress in 30 s")


class Writers:
    """Two writers owning disjoint rows: one dual-writes (the app), one writes plaintext only
    (an old app version); both also insert. ``expected`` is the last value written per row."""

    def __init__(self, engine: AsyncEngine, settings: Settings, start: dict[str, Any]) -> None:
        self.engine = engine
        self.codec = FieldCodec(
            CLIENTS_PII, cipher_of(settings), BlindIndex.from_settings(settings)
        )
        self.expected: dict[str, dict[str, Any]] = {
            pk: dict(zip(FIELDS, values, strict=True)) for pk, values in start.items()
        }
        keys = sorted(self.expected)
        self.dual_rows, self.legacy_rows = keys[0::2], keys[1::2]
        self.workspace = str(uuid.uuid4())
        self.stop = asyncio.Event()
        self.writes = 0

    async def _update(self, pk: str, values: dict[str, Any], dual: bool) -> None:
        cols: dict[str, Any] = (
            self.codec.write_columns(behaviour(Phase.BACKFILL), values, pk) if dual else values
        )
        sets = ", ".join(f"{c} = :{c}" for c in cols)
        async with self.engine.begin() as conn:
            await conn.execute(
                text(f"UPDATE clients SET {sets} WHERE id = :pk"), {**cols, "pk": pk}
            )
        self.expected[pk].update(values)

    async def _insert(self, n: int, dual: bool) -> None:
        pk = str(uuid.uuid4())
        values = {f: f"{'dual' if dual else 'old'}-{f}-{n}" for f in FIELDS}
        cols: dict[str, Any] = (
            self.codec.write_columns(behaviour(Phase.BACKFILL), values, pk) if dual else values
        )
        names = ", ".join(cols)
        params = ", ".join(f":{c}" for c in cols)
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO clients (id, workspace_id, {names}) VALUES (:pk, :ws, {params})"
                ),
                {**cols, "pk": pk, "ws": self.workspace},
            )
        self.expected[pk] = values
        (self.dual_rows if dual else self.legacy_rows).append(pk)

    async def run(self, dual: bool) -> None:
        rnd = random.Random(7 if dual else 11)
        n = 0
        while not self.stop.is_set():
            n += 1
            if n % 10 == 0:
                await self._insert(n, dual)
            else:
                pk = rnd.choice(self.dual_rows if dual else self.legacy_rows)
                tag = "dual" if dual else "old"
                values = {"last_name": f"{tag}-{n}", "email": f"{tag}{n}@example.org"}
                if n % 3 == 0:
                    values["medical_history"] = f"{tag} note {n}"
                await self._update(pk, values, dual)
            self.writes += 1
            await asyncio.sleep(0.002)


async def test_backfill_survives_live_writers_and_sigkill(
    engine: AsyncEngine, settings: Settings, database_url: URL
) -> None:
    await seed_clients(engine, ROWS, workspaces=4)
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    writers = Writers(engine, settings, await plaintexts(engine))
    tasks = [asyncio.create_task(writers.run(dual)) for dual in (True, False)]
    env = _env(database_url)
    run_ids: set[str] = set()
    progressed_before_kill = []
    try:
        for kill in range(KILLS):
            proc = await _start_backfiller(env, "--max-rows-per-second", "1500")
            before = progressed_before_kill[-1] if progressed_before_kill else 0
            await _wait_for_progress(engine, before, proc)
            await asyncio.sleep(0.1 + 0.15 * kill)  # kill mid-run, at a different moment
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            assert proc.returncode == -signal.SIGKILL
            async with engine.connect() as conn:
                cp = await checkpoints.get_checkpoint(conn, "clients_pii", "encrypt")
            assert cp is not None and cp.run_id
            run_ids.add(cp.run_id)
            progressed_before_kill.append(cp.rows_done)
        await asyncio.sleep(0.5)
    finally:
        writers.stop.set()
        await asyncio.gather(*tasks)
    # the killed runs were resumed (same run, growing count), not restarted from scratch
    assert len(run_ids) == 1
    assert progressed_before_kill == sorted(progressed_before_kill)
    assert progressed_before_kill[-1] > 0
    final = await _start_backfiller(env, "--once")
    out, err = await asyncio.wait_for(final.communicate(), timeout=60)
    assert final.returncode == 0, err.decode()[-500:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["event"] == "report" and report["stopped"] == "finished"

    assert writers.writes > 100
    async with engine.connect() as conn:
        cov = await inspector.coverage(conn, CLIENTS_PII)
    assert cov.rows_missing_ciphertext == 0 and cov.percent == 100.0
    result = await verify(
        engine, CLIENTS_PII, cipher_of(settings), BlindIndex.from_settings(settings)
    )
    assert result.ok, result.render()
    assert result.checked == len(writers.expected)
    now = await plaintexts(engine)
    assert now == {pk: tuple(v[f] for f in FIELDS) for pk, v in writers.expected.items()}
