"""``bench.py rewrite``: how long each rewrite method stalls live reads, and how fast the scan is.

For each server -- the embedded PostgreSQL 18 (``VACUUM FULL``) and, when the Debian
``postgresql-15`` and ``postgresql-15-repack`` are installed, a throwaway PostgreSQL 15
(``pg_repack``) -- a database gets ``--rows`` seeded clients, encrypted by the real backfiller,
purged, and finalized with the rewrite skipped (the dead tuples hold the plaintext). Then:

* ``scan_before``: the remanence scan of that table (it finds the plaintext);
* the rewrite, while a probe reads the table every 20 ms: ``lock_seconds`` (the ACCESS
  EXCLUSIVE ``VACUUM FULL`` held, as the rewrite measures it) and ``worst_read_stall_ms`` (the
  probe's worst wait: what live traffic felt), both also per 100k rows;
* ``scan_after``: the scan again (``residual_plaintext`` 0), and its rate in MB/s.

    uv run python loadtests/bench.py rewrite --rows 100000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=100_000, help="clients to seed")
    parser.add_argument("--sample", type=int, default=500, help="rows the scan samples")


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_run(args.rows, args.sample))


async def _prepare(url: Any, rows: int) -> Any:
    """Seeded, encrypted, purged, finalized without rewrite: the engine."""
    from sqlalchemy import text

    from clients_service.seed import seed_clients
    from dualwrite.backfill import Backfiller, BackfillOptions
    from dualwrite.control.transitions import change_phase
    from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
    from dualwrite.db import make_engine
    from dualwrite.phases import BackfillMode

    settings = _settings(url)
    engine = make_engine(url, pool_size=4)
    await seed_clients(engine, rows)
    cipher = FieldCipher(load_keyring(settings))
    bidx = BlindIndex.from_settings(settings)
    for phase, mode in (("backfill", BackfillMode.ENCRYPT), ("contract", BackfillMode.PURGE)):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE dualwrite_migrations SET phase = :p"), {"p": phase})
        options = BackfillOptions(mode=mode, batch_size=2000)
        await Backfiller(engine, "clients_pii", cipher, bidx, options).run()
    await change_phase(
        engine, "clients_pii", "finalized", actor="bench", reason="bench", force=False,
        settings=settings, keyring_current="v1",
    )  # fmt: skip
    return engine, settings, cipher


def _settings(url: Any) -> Any:
    import base64

    from dualwrite.config import Settings

    return Settings(
        database_url=url.render_as_string(hide_password=False),
        encryption_keys="v1=" + base64.b64encode(bytes(range(32))).decode(),
        encryption_current_key="v1",
        blind_index_key=base64.b64encode(bytes(range(200, 232))).decode(),
        soak_seconds=0,
        rewrite_wait_seconds=30,
    )


async def _measure(url: Any, rows: int, method: str, sample: int) -> dict[str, Any]:
    from tests.harness.locks import ReadProbe

    from clients_service.schema import CLIENTS_PII
    from dualwrite.remanence import RewriteOptions, rewrite, scan

    engine, settings, cipher = await _prepare(url, rows)
    try:
        before = await scan(engine, CLIENTS_PII, cipher, sample=sample)
        options = RewriteOptions(method, budget=600 if method == "vacuum-full" else None)
        probe_sql = "SELECT id FROM clients ORDER BY id LIMIT 5"
        async with ReadProbe(engine, probe_sql) as probe:
            started = time.perf_counter()
            done = await rewrite(engine, CLIENTS_PII, settings, options)
            took = time.perf_counter() - started
        after = await scan(engine, CLIENTS_PII, cipher, sample=sample)
    finally:
        await engine.dispose()
    per = 100_000 / rows
    lock = done.lock_seconds
    return {
        "method": done.method,
        "status": done.status,
        "rewrite_seconds": round(took, 2),
        "lock_seconds": None if lock is None else round(lock, 3),
        "lock_seconds_per_100k_rows": None if lock is None else round(lock * per, 3),
        "worst_read_stall_ms": round(probe.worst * 1000, 1),
        "worst_read_stall_ms_per_100k_rows": round(probe.worst * 1000 * per, 1),
        "size_before_mb": round((done.size_before or 0) / 1e6, 1),
        "size_after_mb": round((done.size_after or 0) / 1e6, 1),
        "residual_before": before.residual_plaintext,
        "residual_after": after.residual_plaintext,
        "scan_mb_per_s": round(after.mb_per_second, 2),
        "scan_before_mb_per_s": round(before.mb_per_second, 2),
        "scan_bytes": after.bytes_scanned,
    }


async def _run(rows: int, sample: int) -> dict[str, Any]:
    from dualwrite.testing import DatabaseFactory, debian_bindir, debian_postgres

    out: dict[str, Any] = {"rows": rows}
    factory = DatabaseFactory.start()
    try:
        url = await factory.create("0003")
        out["pg18_vacuum_full"] = await _measure(url, rows, "vacuum-full", sample)
    finally:
        factory.close()
    bindir = debian_bindir(15)
    if bindir is None or not (bindir / "pg_repack").exists():
        out["pg15_repack"] = "skipped: needs postgresql-15 and postgresql-15-repack"
        return out
    with debian_postgres(15) as server:
        from sqlalchemy import text

        from dualwrite.db import make_engine

        url = await DatabaseFactory(server_url=server).create("0003")
        engine = make_engine(url, pool_size=1)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE EXTENSION pg_repack"))
        await engine.dispose()
        out["pg15_repack"] = await _measure(url, rows, "repack", sample)
        url2 = await DatabaseFactory(server_url=server).create("0003")
        out["pg15_vacuum_full"] = await _measure(url2, rows, "vacuum-full", sample)
    return out
