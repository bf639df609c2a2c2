"""``bench.py backfill``: the online backfiller against a pure-SQL ceiling, same run, same table.

A throwaway embedded PostgreSQL gets ``--rows`` seeded clients. Then, each on the same table
with the ciphertext columns reset (and the table vacuumed) before it:

* ``ceiling``: a pure-SQL batched ``UPDATE`` copying the same 8 plaintext columns into the same
  BYTEA columns (``convert_to(col, 'UTF8')``), keyset batches of the same size, one transaction
  per batch - what the database can do with no encryption and no data leaving the server;
* ``backfill``: the real :class:`~dualwrite.backfill.Backfiller` in ``encrypt`` mode
  (claims with ``FOR UPDATE SKIP LOCKED``, AES-256-GCM + blind indexes in Python, checkpoints),
  including its final sweep, with ``--workers`` processes or one in-process worker;
* ``verify``: a full :func:`~dualwrite.verify.verify` run;
* ``scan``: a bare keyset ``SELECT`` of the same 8 columns in batches of the same size.

Extra fields (never folded into ``ratio``, which stays the single-worker backfill against the
issue's 8-column ceiling):

* ``ceiling_with_bidx_rows_per_s`` / ``ratio_vs_bidx_ceiling``: the same pure-SQL copy that also
  fills ``email_bidx`` and ``phone_bidx`` with 16 bytes of ``sha256`` (indexed columns, so like the
  backfill every update touches every index) - the like-for-like database cost;
* ``backfill_rows_per_s_2_workers`` / ``ratio_2_workers``: two ``dualwrite backfill`` processes
  (shards 0 and 1) on another fresh copy.

Memory: the backfiller's resident set is sampled every 20 ms while it runs (in process);
``peak_rss_mb`` is the highest sample, ``rss_growth_mb`` the peak minus the resident set just
before the run. ``--memory-rows 100000,1000000`` instead seeds each size into a fresh
database and runs ONE backfill process (``dualwrite backfill --once``) on it, reporting that
process's peak resident set per size: flat in table size.

    uv run python loadtests/bench.py backfill --rows 200000 --json
    uv run python loadtests/bench.py backfill --memory-rows 100000,1000000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import time
from typing import Any

import psutil

ENC_COLUMNS = None  # filled from the spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200_000, help="clients to seed")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per batch (all runs)")
    parser.add_argument("--workers", type=int, default=1, help="backfill worker count")
    parser.add_argument(
        "--memory-rows", default="", help="comma-separated table sizes: peak RSS per size only"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.memory_rows:
        sizes = [int(n) for n in args.memory_rows.split(",") if n.strip()]
        return asyncio.run(_memory(sizes, args.batch_size))
    return asyncio.run(_run(args.rows, args.batch_size, args.workers))


async def _run(rows: int, batch: int, workers: int) -> dict[str, Any]:
    from clients_service.seed import seed_clients
    from dualwrite.db import make_engine
    from dualwrite.phases import Phase
    from dualwrite.state import registry
    from dualwrite.testing import DatabaseFactory

    factory = DatabaseFactory.start()
    engines: list[Any] = []
    try:
        seeded = await factory.create("0003")
        engine = make_engine(seeded, pool_size=2)
        await seed_clients(engine, rows)
        async with engine.begin() as conn:
            state = await registry.get_migration(conn, "clients_pii")
            for target in (Phase.DUAL_WRITE, Phase.BACKFILL):
                state = await registry.compare_and_swap_phase(
                    conn, state.name, state.version, target
                )
        conn = await _raw(engine)
        await conn.execute("VACUUM (ANALYZE) clients")
        await conn.close()
        await engine.dispose()
        spec = state.spec
        # byte-identical copies of the freshly seeded table: one per contender
        ceiling_db, backfill_db, bidx_db, two_db = [await _clone(factory, seeded) for _ in "1234"]
        engines = [make_engine(u, pool_size=4) for u in (ceiling_db, backfill_db, bidx_db)]
        # every timed run starts right after a CHECKPOINT: a run that follows ~1 GB of WAL
        # from the one before would otherwise pay for that run's checkpoint
        await _checkpoint(engines[0])
        ceiling_s = await _ceiling(engines[0], spec, batch)
        await _reset(engines[0], spec)
        ceiling_hot_s = await _ceiling(engines[0], spec, batch)
        await _checkpoint(engines[2])
        ceiling_bidx_s = await _ceiling(engines[2], spec, batch, with_bidx=True)
        await _checkpoint(engines[1])
        backfill_s, peak, growth, done = await _backfill(engines[1], backfill_db, batch, workers)
        verify_s, checked = await _verify(engines[1], spec)
        scan_s = await _scan(engines[1], spec, batch)
        await _checkpoint(engines[1])
        started = time.perf_counter()
        done_2, _ = await _backfill_processes(two_db, batch, 2)
        two_s = time.perf_counter() - started
    finally:
        for e in engines:
            await e.dispose()
        factory.close()
    ceiling = rows / ceiling_s
    backfill = done / backfill_s
    ceiling_bidx = rows / ceiling_bidx_s
    two = done_2 / two_s
    return {
        "rows": rows,
        "batch_size": batch,
        "workers": workers,
        "backfill_rows_per_s": round(backfill),
        "ceiling_rows_per_s": round(ceiling),
        "ratio": round(backfill / ceiling, 3),
        "ceiling_with_bidx_rows_per_s": round(ceiling_bidx),
        "ratio_vs_bidx_ceiling": round(backfill / ceiling_bidx, 3),
        "backfill_rows_per_s_2_workers": round(two),
        "ratio_2_workers": round(two / ceiling, 3),
        "ceiling_after_reset_vacuum_rows_per_s": round(rows / ceiling_hot_s),
        "verify_rows_per_s": round(checked / verify_s),
        "scan_rows_per_s": round(rows / scan_s),
        "peak_rss_mb": round(peak, 1),
        "rss_growth_mb": round(growth, 1),
        "cpus": os.cpu_count(),
    }


async def _clone(factory: Any, source: Any) -> Any:
    """A byte-identical copy of ``source`` (same pages, same free space, same statistics)."""
    import uuid

    from dualwrite.db import make_engine

    name = f"dw_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(factory.url_for("postgres"), pool_size=1)
    try:
        conn = await _raw(admin)
        try:
            await conn.execute(
                f"CREATE DATABASE {name} TEMPLATE {source.database} STRATEGY FILE_COPY"
            )
        finally:
            await conn.close()
    finally:
        await admin.dispose()
    return source.set(database=name)


async def _raw(engine: Any) -> Any:
    from dualwrite.db import connect_raw

    return await connect_raw(engine)


async def _checkpoint(engine: Any) -> None:
    conn = await _raw(engine)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _reset(engine: Any, spec: Any) -> None:
    sets = []
    for f in spec.fields:
        sets.append(f"{f.ciphertext_column} = NULL")
        if f.bidx_column:
            sets.append(f"{f.bidx_column} = NULL")
    conn = await _raw(engine)
    try:
        await conn.execute(f"UPDATE {spec.table} SET {', '.join(sets)}")
        await conn.execute("DELETE FROM dualwrite_checkpoints")
        await conn.execute(f"VACUUM (ANALYZE) {spec.table}")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _ceiling(engine: Any, spec: Any, batch: int, *, with_bidx: bool = False) -> float:
    """Seconds for the pure-SQL batched copy of the 8 columns into the BYTEA columns
    (``with_bidx``: also 16 bytes of sha256 into each blind-index column)."""
    items = [
        f"{f.ciphertext_column} = convert_to({f.plaintext_column}, 'UTF8')" for f in spec.fields
    ]
    if with_bidx:
        items += [
            f"{f.bidx_column} = substring(sha256(convert_to({f.plaintext_column}, 'UTF8')) "
            "from 1 for 16)"
            for f in spec.fields
            if f.bidx_column
        ]
    sets = ", ".join(items)
    pk, t = spec.primary_key, spec.table
    sql = (
        f"WITH s AS (SELECT {pk} FROM {t} WHERE {pk} > $1 ORDER BY {pk} LIMIT $2), "
        f"u AS (UPDATE {t} SET {sets} FROM s WHERE {t}.{pk} = s.{pk}) "
        f"SELECT max({pk}::text)::uuid FROM s"
    )
    conn = await _raw(engine)
    try:
        stmt = await conn.prepare(sql)
        last = "00000000-0000-0000-0000-000000000000"
        started = time.perf_counter()
        while True:
            nxt = await stmt.fetchval(last, batch)
            if nxt is None:
                break
            last = nxt
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _scan(engine: Any, spec: Any, batch: int) -> float:
    cols = ", ".join(f.plaintext_column for f in spec.fields)
    pk, t = spec.primary_key, spec.table
    conn = await _raw(engine)
    try:
        stmt = await conn.prepare(
            f"SELECT {pk}, {cols} FROM {t} WHERE {pk} > $1 ORDER BY {pk} LIMIT $2"
        )
        last = "00000000-0000-0000-0000-000000000000"
        started = time.perf_counter()
        while True:
            got = await stmt.fetch(last, batch)
            if not got:
                break
            last = got[-1][0]
        return time.perf_counter() - started
    finally:
        await conn.close()


def _settings(url: Any) -> Any:
    from dualwrite.config import Settings

    key = base64.b64encode(os.urandom(32)).decode()
    return Settings.model_validate(
        {
            "database_url": url.render_as_string(hide_password=False),
            "encryption_keys": f"v1={key}",
            "blind_index_key": base64.b64encode(os.urandom(32)).decode(),
        }
    )


_SETTINGS: Any = None


async def _backfill(
    engine: Any, url: Any, batch: int, workers: int
) -> tuple[float, float, float, int]:
    global _SETTINGS
    from dualwrite.backfill import Backfiller, BackfillOptions
    from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
    from dualwrite.phases import BackfillMode

    _SETTINGS = _settings(url)
    cipher = FieldCipher(load_keyring(_SETTINGS))
    bidx = BlindIndex.from_settings(_SETTINGS)
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = before
    running = True

    async def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    if workers <= 1:
        options = BackfillOptions(mode=BackfillMode.ENCRYPT, batch_size=batch)
        report = await Backfiller(engine, "clients_pii", cipher, bidx, options).run()
        done = report.rows_done
    else:
        done, _ = await _backfill_processes(url, batch, workers)
    took = time.perf_counter() - started
    running = False
    await sampler
    mb = 1024 * 1024
    return took, peak / mb, (peak - before) / mb, done


async def _backfill_processes(url: Any, batch: int, workers: int) -> tuple[int, float]:
    """``workers`` CLI processes at once (shards 0..n-1) -> (rows done summed from the
    checkpoints, highest resident set of one process in MB, sampled every 50 ms)."""
    import sys

    s = _SETTINGS or _settings(url)
    env = dict(os.environ)
    env.update(
        DATABASE_URL=url.render_as_string(hide_password=False),
        ENCRYPTION_KEYS=s.encryption_keys.get_secret_value(),
        BLIND_INDEX_KEY=s.blind_index_key.get_secret_value(),
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from dualwrite.cli import main; main()",
            "backfill",
            "--migration",
            "clients_pii",
            "--mode",
            "encrypt",
            "--batch-size",
            str(batch),
            "--once",
            "--shard",
            str(i),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    peak = 0
    watched = [psutil.Process(p.pid) for p in procs]
    while any(p.returncode is None for p in procs):
        for w in watched:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, w.memory_info().rss)
        await asyncio.sleep(0.05)
    for p in procs:
        await p.wait()
    from dualwrite.db import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        conn = await _raw(engine)
        try:
            done = int(await conn.fetchval("SELECT sum(rows_done) FROM dualwrite_checkpoints"))
            return done, peak / (1024 * 1024)
        finally:
            await conn.close()
    finally:
        await engine.dispose()


async def _memory(sizes: list[int], batch: int) -> dict[str, Any]:
    """Peak resident set of one backfill process per table size (each in a fresh database)."""
    from clients_service.seed import seed_clients
    from dualwrite.db import make_engine
    from dualwrite.phases import Phase
    from dualwrite.state import registry
    from dualwrite.testing import DatabaseFactory

    factory = DatabaseFactory.start()
    out: dict[str, Any] = {"batch_size": batch, "memory": []}
    try:
        for rows in sizes:
            url = await factory.create("0003")
            engine = make_engine(url, pool_size=2)
            try:
                await seed_clients(engine, rows)
                async with engine.begin() as conn:
                    state = await registry.get_migration(conn, "clients_pii")
                    for target in (Phase.DUAL_WRITE, Phase.BACKFILL):
                        state = await registry.compare_and_swap_phase(
                            conn, state.name, state.version, target
                        )
            finally:
                await engine.dispose()
            started = time.perf_counter()
            done, peak = await _backfill_processes(url, batch, 1)
            took = time.perf_counter() - started
            out["memory"].append(
                {"rows": rows, "rows_done": done, "peak_rss_mb": round(peak, 1),
                 "rows_per_s": round(done / took)}
            )  # fmt: skip
            await factory.drop(url)
    finally:
        factory.close()
    peaks = [m["peak_rss_mb"] for m in out["memory"]]
    out["peak_rss_spread_mb"] = round(max(peaks) - min(peaks), 1) if peaks else 0.0
    return out


async def _verify(engine: Any, spec: Any) -> tuple[float, int]:
    from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
    from dualwrite.verify import verify

    cipher = FieldCipher(load_keyring(_SETTINGS))
    started = time.perf_counter()
    report = await verify(engine, spec, cipher, BlindIndex.from_settings(_SETTINGS), full=True)
    return time.perf_counter() - started, report.checked


def format_human(result: dict[str, Any]) -> str:
    if "memory" in result:
        return "\n".join(
            f"{m['rows']:,} rows: backfill process peak RSS {m['peak_rss_mb']} MB "
            f"({m['rows_per_s']:,} rows/s)"
            for m in result["memory"]
        )
    return (
        f"backfill {result['backfill_rows_per_s']:,} rows/s vs pure-SQL ceiling "
        f"{result['ceiling_rows_per_s']:,} rows/s: ratio {result['ratio']}\n"
        f"with blind indexes the SQL ceiling is {result['ceiling_with_bidx_rows_per_s']:,} rows/s "
        f"(ratio {result['ratio_vs_bidx_ceiling']}); 2 worker processes "
        f"{result['backfill_rows_per_s_2_workers']:,} rows/s (ratio {result['ratio_2_workers']})\n"
        f"verify {result['verify_rows_per_s']:,} rows/s, "
        f"scan {result['scan_rows_per_s']:,} rows/s\n"
        f"peak RSS {result['peak_rss_mb']} MB (growth {result['rss_growth_mb']} MB) "
        f"for {result['rows']:,} rows"
    )
