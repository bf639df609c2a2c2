"""Several worker processes behind one command: refusals, start-up failures and the totals of
``dualwrite backfill --workers N --metrics-port P`` (prometheus-client multiprocess mode)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.phases import Phase
from tests.harness.processes import environment
from tests.harness.prometheus import eventually, free_port
from tests.harness.service import dualwrite_process
from tests.integration.backfill_helpers import move_to
from tests.integration.clients_support import seed_legacy_rows


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualwrite.cli", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_serve_with_workers_refuses_a_busy_port_in_one_line(database_url: URL) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run(environment(database_url), "serve", "--port", str(port), "--workers", "2")
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_serve_with_workers_stops_with_code_3_when_the_app_cannot_start(
    database_url: URL,
) -> None:
    """No restart loop: a worker whose lifespan fails (database unreachable) ends the command."""
    unreachable = database_url.set(host="127.0.0.1", port=free_port(), query={})
    env = environment(unreachable)
    proc = run(env, "serve", "--port", str(free_port()), "--workers", "2", "--log-level", "error")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "could not start" in proc.stderr
    assert "restarting" not in proc.stderr


def samples(body: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_backfill_workers_serve_the_totals_of_every_shard_on_one_port(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    await seed_legacy_rows(engine, 1000, uuid.uuid4())
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    port = free_port()
    env = environment(database_url)
    args = ("backfill", "--workers", "2", "--batch-size", "100", "--json")
    async with dualwrite_process(env, tmp_path, "bf", *args, "--metrics-port", str(port)) as bf:

        async def scrape() -> str:
            assert bf.proc.poll() is None, bf.output()
            try:
                async with httpx.AsyncClient(timeout=5) as c:
                    return (await c.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                return ""

        def done(body: str) -> float:
            rows = samples(body, "dualwrite_backfill_rows_total")
            return sum(v for labels, v in rows.items() if ("outcome", "done") in labels)

        body = await eventually(scrape, lambda b: done(b) == 1000, timeout=120, what="1000 rows")
        assert len(bf.children()) == 2  # two shards, one port, one total
        async with engine.connect() as conn:
            left = (
                await conn.execute(text("SELECT count(*) FROM clients WHERE email_bidx IS NULL"))
            ).scalar_one()
        assert left == 0
        failed = {
            k: v
            for k, v in samples(body, "dualwrite_backfill_rows_total").items()
            if ("outcome", "failed") in k
        }
        assert list(failed.values()) == [0.0]  # exported at 0: the first failure is an increase
        remaining = samples(body, "dualwrite_backfill_rows_remaining")
        assert list(remaining.values()) == [0.0]  # livemin: one series, not one per worker
        assert samples(body, "dualwrite_table_rows") == {(("migration", "clients_pii"),): 1000.0}
        bf.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(bf.proc.wait, 30)
    assert code == 0, bf.output()
    assert "Traceback" not in bf.output()
