"""``bench.py api``: the reference API's latency before and after the switch, same run.

A throwaway embedded PostgreSQL gets ``--rows`` seeded clients (10 workspaces). The reference
service runs as its own process (``dualwrite serve``, one uvicorn worker) and this process sends
sequential requests over loopback HTTP:

* in ``plaintext`` (before any encryption), then — after a real backfill and verification — in
  ``read_switch`` (reads decrypt every field; writes encrypt 8 fields + 2 blind indexes);
* single client read, bulk read of 100, create, update; p50/p95 in milliseconds;
* ``encode_client_us``: the in-process cost of encrypting one client (8 fields + 2 blind
  indexes) through :class:`~dualwrite.runtime.codec.FieldCodec`, and ``decode_client_us`` for
  reading it.

DESIGN §9 floors: single read p95 < 100 ms, bulk 100 p95 < 1000 ms, per-client encryption
overhead < 10 ms.

    uv run python loadtests/bench.py api --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

TOKEN = "bench-api-token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="clients to seed")
    parser.add_argument("--requests", type=int, default=300, help="requests per kind and phase")


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_run(int(args.rows), int(args.requests)))


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure(client: httpx.AsyncClient, ws: str, ids: list[str], n: int) -> dict[str, float]:
    timings: dict[str, list[float]] = {"single": [], "bulk100": [], "create": [], "update": []}

    async def timed(kind: str, method: str, url: str, **kw: Any) -> httpx.Response:
        t0 = time.perf_counter()
        resp = await client.request(method, url, **kw)
        timings[kind].append(time.perf_counter() - t0)
        if resp.status_code >= 400:
            raise SystemExit(f"{method} {url}: HTTP {resp.status_code}")
        return resp

    for i in range(n):
        await timed("single", "GET", f"/workspaces/{ws}/clients/{ids[i % len(ids)]}")
        if i % 3 == 0:
            await timed("bulk100", "GET", f"/workspaces/{ws}/clients?limit=100")
        body = {
            "first_name": "Bench",
            "last_name": f"Client{i}",
            "email": f"b{i}@example.org",
            "phone": "+1 555 010 0000",
            "address": "1 Oak St",
            "medical_history": "x" * 300,
            "emergency_contact_name": "Sam Doe",
            "emergency_contact_phone": "+1 555 000",
        }
        await timed("create", "POST", f"/workspaces/{ws}/clients", json=body)
        await timed(
            "update",
            "PATCH",
            f"/workspaces/{ws}/clients/{ids[i % len(ids)]}",
            json={"phone": f"+1 555 {i:07d}"},
        )
    out: dict[str, float] = {}
    for kind, samples in timings.items():
        out[f"{kind}_p50_ms"] = _pct(samples, 0.50)
        out[f"{kind}_p95_ms"] = _pct(samples, 0.95)
    return out


def _codec_costs(settings: Any) -> dict[str, float]:
    from clients_service.schema import CLIENTS_PII
    from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
    from dualwrite.phases import Phase, behaviour
    from dualwrite.runtime.codec import FieldCodec

    codec = FieldCodec(
        CLIENTS_PII, FieldCipher(load_keyring(settings)), BlindIndex.from_settings(settings)
    )
    values = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.org",
        "phone": "+44 20 7946 0000",
        "address": "12 Marylebone Rd, London",
        "medical_history": "Presenting: insomnia. Sleep diary shows 5-6h per night. " * 5,
        "emergency_contact_name": "Charles Babbage",
        "emergency_contact_phone": "+44 20 7946 0001",
    }
    rk = str(uuid.uuid4())
    b = behaviour(Phase.READ_SWITCH)
    n = 5000
    t0 = time.perf_counter()
    for _ in range(n):
        cols = codec.write_columns(b, values, rk)
    encode_us = (time.perf_counter() - t0) / n * 1e6
    table, dec = CLIENTS_PII.table, codec.cipher.decrypt if codec.cipher else None
    assert dec is not None
    t0 = time.perf_counter()
    for _ in range(n):
        for f in CLIENTS_PII.fields:
            dec(cols[f.ciphertext_column], table=table, column=f.name, row_key=rk)
    decode_us = (time.perf_counter() - t0) / n * 1e6
    return {"encode_client_us": round(encode_us, 1), "decode_client_us": round(decode_us, 1)}


async def _run(rows: int, requests: int) -> dict[str, Any]:
    from clients_service.seed import seed_clients
    from dualwrite.backfill import Backfiller, BackfillOptions
    from dualwrite.config import Settings
    from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
    from dualwrite.db import make_engine
    from dualwrite.phases import BackfillMode, Phase
    from dualwrite.state import registry
    from dualwrite.testing import DatabaseFactory
    from dualwrite.verify import verify

    factory = DatabaseFactory.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        url = await factory.create("0003")
        keys = {
            "ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
            "BLIND_INDEX_KEY": base64.b64encode(os.urandom(32)).decode(),
        }
        db_url = url.render_as_string(hide_password=False)
        settings = Settings(
            database_url=db_url,
            encryption_key=keys["ENCRYPTION_KEY"],
            blind_index_key=keys["BLIND_INDEX_KEY"],
        )
        engine = make_engine(url, pool_size=2)
        await seed_clients(engine, rows)
        async with engine.connect() as conn:
            ws = str(
                (
                    await conn.exec_driver_sql(
                        "SELECT workspace_id FROM clients GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
                    )
                ).scalar_one()
            )
            ids = [
                str(r[0])
                for r in await conn.exec_driver_sql(
                    f"SELECT id FROM clients WHERE workspace_id = '{ws}' AND is_active LIMIT 500"
                )
            ]
        port = _free_port()
        env = {
            **os.environ,
            **keys,
            "DATABASE_URL": db_url,
            "API_TOKEN": TOKEN,
            "POLL_INTERVAL_SECONDS": "0.5",
            "SHADOW_READ_SAMPLE_RATE": "0.01",
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dualwrite.cli",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )

        async def wait_phase(phase: str) -> None:
            for _ in range(300):
                try:
                    got = (await client.get("/healthz")).json().get("phase")
                    if got == phase:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            raise SystemExit(f"service never observed {phase}")

        async def move(*targets: Phase) -> None:
            async with engine.begin() as conn:
                state = await registry.get_migration(conn, "clients_pii")
                for t in targets:
                    state = await registry.compare_and_swap_phase(
                        conn, state.name, state.version, t
                    )

        await wait_phase("plaintext")
        await _measure(client, ws, ids, max(50, requests // 3))  # warm-up, discarded
        plain = await _measure(client, ws, ids, requests)
        await move(Phase.DUAL_WRITE, Phase.BACKFILL)
        cipher = FieldCipher(load_keyring(settings))
        bidx = BlindIndex.from_settings(settings)
        await Backfiller(
            engine, "clients_pii", cipher, bidx, BackfillOptions(mode=BackfillMode.ENCRYPT)
        ).run()
        async with engine.connect() as conn:
            spec = (await registry.get_migration(conn, "clients_pii")).spec
        report = await verify(engine, spec, cipher, bidx, full=True)
        if not report.ok:
            raise SystemExit("verification failed before the switch")
        await move(Phase.READ_SWITCH)
        await wait_phase("read_switch")
        await _measure(client, ws, ids, max(50, requests // 3))  # same warm-up after the switch
        switched = await _measure(client, ws, ids, requests)
        await client.aclose()
        await engine.dispose()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
        factory.close()
    result: dict[str, Any] = {"rows": rows, "requests_per_kind": requests}
    result.update({f"plaintext_{k}": v for k, v in plain.items()})
    result.update({f"read_switch_{k}": v for k, v in switched.items()})
    for kind in ("single", "bulk100", "create", "update"):
        base = plain[f"{kind}_p50_ms"]
        result[f"{kind}_p50_ratio"] = round(switched[f"{kind}_p50_ms"] / base, 2) if base else None
    result.update(_codec_costs(settings))
    result["encryption_overhead_create_p50_ms"] = round(
        switched["create_p50_ms"] - plain["create_p50_ms"], 2
    )
    return result
