"""``bench.py all``: every figure of the encrypted read path and the backfill, ONE run, ONE JSON.

A throwaway embedded PostgreSQL gets ``--rows`` seeded clients (10 workspaces), then byte-identical
copies of that table (``CREATE DATABASE ... TEMPLATE``), one per contender:

* ``codec``: encode (8 fields + 2 blind indexes) and decode (8 fields) of one client through
  :class:`~dualwrite.runtime.codec.FieldCodec`, against bare ``AESGCM`` on the same 8 values
  (``os.urandom(12)`` + ``encrypt`` / ``decrypt`` with precomputed associated data) and against
  bare AES-GCM plus the two bare HMAC-SHA256 blind indexes (padded-key states precomputed, the
  cheapest bare HMAC); rounds of all loops back to back, each ratio the median of the per-round
  ratios (robust to the machine's drift between rounds), absolute times the best round;
* ``decode_page100``: a bulk page's decryption (100 clients) through ``decode_rows`` with the
  native column opener and the Python one, against bare ``AESGCM.decrypt`` of its 800 values;
* ``reads``: two servers side by side (``dualwrite serve``, one uvicorn worker each): one on a
  ``plaintext`` copy, one on a copy backfilled, verified and moved to ``read_switch`` (both
  copies then vacuumed, as autovacuum would soon after a backfill in production);
  ``--clients`` concurrent HTTP clients, interleaved rounds (plaintext, encrypted, plaintext,
  ...), single reads and bulk reads of 100; p95 over all rounds, ratios encrypted/plaintext, and
  the ratio within each round pair with its median over the pairs (robust to drift). The load
  client is :mod:`bench_http` (light: the CPU is left to the servers under measure). With
  ``--python-opener`` a third server on the encrypted copy (``DUALWRITE_NO_NATIVE=1``: bulk
  pages opened by the Python column opener) joins the same rounds (``python_opener_*`` keys);
* ``backfill_under_load``: a server on a copy in ``backfill`` phase; the same load idle, then
  while ``dualwrite backfill --once`` runs with default settings (its latency budget included);
  single-read p95 during vs idle and the backfill's rate;
* ``backfill_vs_sql``: on three more copies, the in-process backfiller, by default and with
  ``defer_indexes`` (the blind-index indexes dropped for the pass and rebuilt after it, the
  rebuild inside the timed run) (no API, so no latency
  budget applies) against a pure-SQL batched copy of the same 8 columns with both blind indexes
  computed in SQL as HMAC-SHA256 (pgcrypto's ``hmac`` when the server has it, else the same
  HMAC built from core ``sha256``: ``sha256(k^opad || sha256(k^ipad || m))``, byte-identical,
  checked), same batch size, keyset batches, one transaction each;
* ``memory``: peak resident set of one ``dualwrite backfill --once`` process per
  ``--memory-rows`` size (each in a fresh database).

    uv run python loadtests/bench.py all --json                   # 200k rows
    uv run python loadtests/bench.py all --rows 20000 --memory-rows 20000,100000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_api import _free_port, _pct
from bench_backfill import _checkpoint, _clone, _memory, _raw
from bench_http import HttpError, HttpxClient, LoadClient

TOKEN = "bench-all-token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200_000, help="clients to seed")
    parser.add_argument("--batch-size", type=int, default=1000, help="backfill / SQL batch")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per server")
    parser.add_argument("--per-round", type=int, default=200, help="single reads per round")
    parser.add_argument(
        "--load-client",
        choices=("light", "httpx"),
        default="light",
        help="the reads' HTTP client: light (default) or httpx (takes CPU the servers need)",
    )
    parser.add_argument(
        "--python-opener",
        action="store_true",
        help="a third server on the encrypted copy with DUALWRITE_NO_NATIVE=1, in the same rounds",
    )
    parser.add_argument(
        "--memory-rows", default="100000", help="comma-separated sizes for the memory figure"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": args.rows, "cpus": os.cpu_count()}
    out.update(_codec())
    out.update(_page_decode())
    out.update(asyncio.run(_run(args)))
    sizes = [int(n) for n in str(args.memory_rows).split(",") if n.strip()]
    if sizes:
        mem = asyncio.run(_memory(sizes, args.batch_size))
        out["memory"] = mem["memory"]
        out["memory_peak_rss_spread_mb"] = mem["peak_rss_spread_mb"]
    return out


# --- codec ---------------------------------------------------------------------------------


def _codec() -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from clients_service.schema import CLIENTS_PII
    from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring, associated_data
    from dualwrite.phases import Phase, behaviour
    from dualwrite.runtime.codec import FieldCodec, read_columns

    key, bkey = os.urandom(32), os.urandom(32)
    codec = FieldCodec(CLIENTS_PII, FieldCipher(Keyring([DataKey("v1", key)])), BlindIndex(bkey))
    values = {
        "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org",
        "phone": "+44 20 7946 0000", "address": "12 Marylebone Rd, London",
        "medical_history": "Presenting: insomnia. Sleep diary shows 5-6h per night. " * 5,
        "emergency_contact_name": "Charles Babbage",
        "emergency_contact_phone": "+44 20 7946 0001",
    }  # fmt: skip
    rk, b = str(uuid.uuid4()), behaviour(Phase.READ_SWITCH)
    cols = codec.write_columns(b, values, rk)
    names = ("id", *read_columns(CLIENTS_PII, b))
    layout = codec.layout(b, names)
    row = (None, *(cols.get(c, values.get(c)) for c in names[1:]))
    assert codec.decode(layout, row, rk) == values
    aead, table = AESGCM(key), CLIENTS_PII.aad_table
    fields = [(values[f.name].encode(), associated_data("v1", table, f.name, rk))
              for f in CLIENTS_PII.fields]  # fmt: skip
    sealed = []
    for data, aad in fields:
        nonce = os.urandom(12)
        sealed.append((nonce, aead.encrypt(nonce, data, aad), aad))
    macs = [b"dualwrite.bidx.v1|email|" + values["email"].encode(),
            b"dualwrite.bidx.v1|phone|" + b"442079460000"]  # fmt: skip
    # bare HMAC at its cheapest: the padded-key states computed once (what BlindIndex does)
    inner = hashlib.sha256(bytes(c ^ 0x36 for c in bkey.ljust(64, b"\0")))
    outer = hashlib.sha256(bytes(c ^ 0x5C for c in bkey.ljust(64, b"\0")))
    assert _hmac(inner, outer, macs[0]) == hmac.digest(bkey, macs[0], "sha256")

    def raw_encrypt() -> None:
        for data, aad in fields:
            aead.encrypt(os.urandom(12), data, aad)

    def raw_hmac() -> None:
        for m in macs:
            _hmac(inner, outer, m)

    def raw_decrypt() -> None:
        for nonce, ct, aad in sealed:
            aead.decrypt(nonce, ct, aad)

    loops = {
        "raw_encrypt": raw_encrypt,
        "raw_hmac": raw_hmac,
        "raw_decrypt": raw_decrypt,
        "encode": lambda: codec.write_columns(b, values, rk),
        "decode": lambda: codec.decode(layout, row, rk),
    }
    # Rounds of every loop back to back; a ratio is taken within each round (the machine's
    # speed drifts between rounds on shared cores) and the median round reported.
    n, rounds = 1000, 60
    times: dict[str, list[float]] = {name: [] for name in loops}
    for i in range(rounds):
        order = list(loops.items()) if i % 2 == 0 else list(reversed(loops.items()))
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n * 1e6)

    def ratio(num: str, *den: str) -> float:
        per_round = [times[num][i] / sum(times[d][i] for d in den) for i in range(rounds)]
        return round(statistics.median(per_round), 2)

    best = {name: round(min(v), 2) for name, v in times.items()}
    return {
        "encode_client_us": best["encode"],
        "decode_client_us": best["decode"],
        "bare_aesgcm_encrypt_8_fields_us": best["raw_encrypt"],
        "bare_aesgcm_decrypt_8_fields_us": best["raw_decrypt"],
        "bare_hmac_2_blind_indexes_us": best["raw_hmac"],
        "encode_vs_bare_aesgcm": ratio("encode", "raw_encrypt"),
        "encode_vs_bare_aesgcm_plus_hmac": ratio("encode", "raw_encrypt", "raw_hmac"),
        "decode_vs_bare_aesgcm": ratio("decode", "raw_decrypt"),
    }


def _page_decode() -> dict[str, Any]:
    """A bulk page's decryption (100 clients, 8 fields) through ``FieldCodec.decode_rows``,
    with the native column opener and with the Python one, against bare ``AESGCM.decrypt`` of
    the same 800 values (associated data precomputed); per-round ratios, median round."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from clients_service.schema import CLIENTS_PII
    from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring, associated_data
    from dualwrite.crypto import columns as col
    from dualwrite.phases import Phase, behaviour
    from dualwrite.runtime.codec import FieldCodec, read_columns

    key = os.urandom(32)
    b = behaviour(Phase.FINALIZED)  # reads ciphertext alone, no shadow compare
    names = ("id", *read_columns(CLIENTS_PII, b))
    vals = {f.name: f"{f.name} of client, " * (8 if f.name == "medical_history" else 1)
            for f in CLIENTS_PII.fields}  # fmt: skip
    made: dict[str, Any] = {}
    for kind in ("native", "python") if col.NATIVE else ("python",):
        col.NATIVE = kind == "native"
        codec = FieldCodec(CLIENTS_PII, FieldCipher(Keyring([DataKey("v1", key)])),
                           BlindIndex(os.urandom(32)))  # fmt: skip
        made[kind] = (codec, codec.layout(b, names))
    col.NATIVE = "native" in made
    codec = made["python"][0]
    rows = []
    for _ in range(100):
        pk = uuid.uuid4()
        cols = codec.write_columns(behaviour(Phase.DUAL_WRITE), vals, str(pk))
        rows.append((pk, *(cols[c] for c in names[1:])))
    aead = AESGCM(key)
    bare = [(ct[3:15], ct[15:], associated_data("v1", CLIENTS_PII.aad_table, f, str(r[0])))
            for r in rows for f, ct in zip(vals, r[1:], strict=True)]  # fmt: skip
    loops: dict[str, Any] = {
        kind: (lambda c=c, lay=lay: c.decode_rows(lay, rows, ("id",), 0))
        for kind, (c, lay) in made.items()
    }
    loops["bare"] = lambda: [aead.decrypt(n, ct, aad) for n, ct, aad in bare]
    for fn in loops.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in loops}
    for i in range(20):
        for name, fn in list(loops.items())[:: 1 if i % 2 == 0 else -1]:
            t0 = time.perf_counter()
            for _ in range(50):
                fn()
            times[name].append((time.perf_counter() - t0) / 50 * 1e6)

    def ratio(a: str, d: str) -> float:
        return round(statistics.median(x / y for x, y in zip(times[a], times[d], strict=True)), 2)

    out: dict[str, Any] = {f"decode_page100_{k}_us": round(min(v), 1) for k, v in times.items()}
    out["decode_page100_python_vs_bare_aesgcm"] = ratio("python", "bare")
    if "native" in times:
        out["decode_page100_native_vs_bare_aesgcm"] = ratio("native", "bare")
        out["decode_page100_native_vs_python"] = ratio("native", "python")
    return out


def _hmac(inner: Any, outer: Any, message: bytes) -> bytes:
    i = inner.copy()
    i.update(message)
    o = outer.copy()
    o.update(i.digest())
    return bytes(o.digest())


# --- databases and servers -----------------------------------------------------------------


async def _move(engine: Any, *targets: Any) -> None:
    from dualwrite.state import registry

    async with engine.begin() as conn:
        state = await registry.get_migration(conn, "clients_pii")
        for t in targets:
            state = await registry.compare_and_swap_phase(conn, state.name, state.version, t)


def _serve(url: Any, keys: dict[str, str], **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, **keys, "DATABASE_URL": url.render_as_string(hide_password=False),
           "API_TOKEN": TOKEN, "POLL_INTERVAL_SECONDS": "0.5",
           "SHADOW_READ_SAMPLE_RATE": "0.01", **extra}  # fmt: skip
    cmd = [sys.executable, "-m", "dualwrite.cli", "serve", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


async def _wait_phase(client: LoadClient | HttpxClient, phase: str) -> None:
    for _ in range(600):
        with contextlib.suppress(HttpError, ValueError):
            status, body = await client.get("/healthz")
            if status == 200 and json.loads(body).get("phase") == phase:
                return
        await asyncio.sleep(0.1)
    raise SystemExit(f"service never observed {phase}")


async def _load(
    client: LoadClient | HttpxClient, ws: str, ids: list[str], clients: int, singles: int
) -> dict[str, list[float]]:
    """``clients`` concurrent loops: ``singles`` single reads each, a bulk read every 4th."""
    got: dict[str, list[float]] = {"single": [], "bulk100": []}

    async def one(kind: str, url: str) -> None:
        t0 = time.perf_counter()
        status, _ = await client.get(url)
        got[kind].append(time.perf_counter() - t0)
        if status >= 400:
            raise SystemExit(f"GET {url}: HTTP {status}")

    async def loop(seed: int) -> None:
        rnd = random.Random(seed)
        for i in range(singles):
            await one("single", f"/workspaces/{ws}/clients/{rnd.choice(ids)}")
            if i % 4 == 0:
                await one("bulk100", f"/workspaces/{ws}/clients?limit=100&after={rnd.choice(ids)}")

    await asyncio.gather(*(loop(s) for s in range(clients)))
    return got


def _client(base: str, kind: str = "light") -> LoadClient | HttpxClient:
    """The load client: :mod:`bench_http` (light, so it leaves the CPU to the servers) or,
    for comparison, ``httpx``."""
    make = LoadClient if kind == "light" else HttpxClient
    return make(base, {"Authorization": f"Bearer {TOKEN}"})


# --- the run -------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from bench_backfill import _settings

    from clients_service.seed import seed_clients
    from dualwrite.backfill import Backfiller, BackfillOptions
    from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
    from dualwrite.db import make_engine
    from dualwrite.phases import BackfillMode, Phase
    from dualwrite.testing import DatabaseFactory
    from dualwrite.verify import verify

    factory = DatabaseFactory.start()
    procs: list[subprocess.Popen[bytes]] = []
    engines: list[Any] = []
    out: dict[str, Any] = {}
    try:
        seeded = await factory.create("0003")
        engine = make_engine(seeded, pool_size=2)
        await seed_clients(engine, args.rows)
        await _move(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
        conn = await _raw(engine)
        await conn.execute("VACUUM (ANALYZE) clients")
        biggest = "SELECT workspace_id FROM clients GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        ws = str(await conn.fetchval(biggest))
        mine = "SELECT id FROM clients WHERE workspace_id = $1 AND is_active"
        ids = [str(r[0]) for r in await conn.fetch(mine, uuid.UUID(ws))]
        await conn.close()
        await engine.dispose()
        copies = [await _clone(factory, seeded) for _ in "123456"]
        plain_db, enc_db, load_db = copies[:3]
        s = _settings(seeded)
        keys = {"ENCRYPTION_KEYS": s.encryption_keys.get_secret_value(),
                "BLIND_INDEX_KEY": s.blind_index_key.get_secret_value()}  # fmt: skip
        cipher, bidx = FieldCipher(load_keyring(s)), BlindIndex.from_settings(s)
        engines = [make_engine(u, pool_size=4) for u in copies]
        e_plain, e_enc, _, e_sql, e_bf, e_bfd = engines
        await _move(e_plain, Phase.PLAINTEXT)  # backward: plaintext, no ciphertext ever
        # the encrypted copy: a real backfill, a full verification, then the switch
        t0 = time.perf_counter()
        opts = BackfillOptions(mode=BackfillMode.ENCRYPT, batch_size=args.batch_size)
        await Backfiller(e_enc, "clients_pii", cipher, bidx, opts).run()
        from clients_service.schema import CLIENTS_PII

        if not (await verify(e_enc, CLIENTS_PII, cipher, bidx, full=True)).ok:
            raise SystemExit("verification failed before the switch")
        await _move(e_enc, Phase.READ_SWITCH)
        # the backfill rewrote every row: vacuum both read copies now, as autovacuum soon would
        # in production, so that no autovacuum of 200k dead versions runs inside the rounds
        for e in (e_plain, e_enc):
            conn = await _raw(e)
            await conn.execute("VACUUM (ANALYZE) clients")
            await conn.close()
        out["prepare_encrypted_copy_s"] = round(time.perf_counter() - t0, 1)

        out.update(await _reads(args, plain_db, enc_db, keys, ws, ids, procs))
        out.update(await _under_load(args, load_db, keys, ws, ids, procs))
        out.update(await _vs_sql(args, e_sql, (e_bf, e_bfd), cipher, bidx, s))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        for e in engines:
            await e.dispose()
        factory.close()
    return out


async def _reads(args: Any, plain_db: Any, enc_db: Any, keys: dict[str, str], ws: str,
                 ids: list[str], procs: list[Any]) -> dict[str, Any]:  # fmt: skip
    wanted = [("plain", plain_db, {}, "plaintext"), ("enc", enc_db, {}, "read_switch")]
    if args.python_opener:  # a third server on the same copy, its bulk pages opened in Python
        wanted.append(("enc_python", enc_db, {"DUALWRITE_NO_NATIVE": "1"}, "read_switch"))
    servers: dict[str, tuple[Any, Any]] = {}
    for name, db, extra, _ in wanted:
        proc, base = _serve(db, keys, **extra)
        procs.append(proc)
        servers[name] = (proc, _client(base, args.load_client))
    for name, _, _, phase in wanted:
        await _wait_phase(servers[name][1], phase)
    return await _measure_reads(args, servers, ws, ids)


async def _measure_reads(args: Any, servers: dict[str, tuple[Any, Any]], ws: str,
                         ids: list[str]) -> dict[str, Any]:  # fmt: skip
    """Interleaved rounds over ``servers`` (name -> (process, client); ``plain`` and ``enc``,
    maybe ``enc_python``), each round in the reverse order of the one before."""
    for _, c in servers.values():  # warm-up, discarded
        await _load(c, ws, ids, args.clients, args.per_round // 2)
    cpu0 = {n: _cpu_seconds(p.pid) for n, (p, _) in servers.items()}
    lat: dict[str, dict[str, list[float]]] = {n: {} for n in servers}
    rounds: list[dict[str, dict[str, list[float]]]] = []  # per round: name -> kind -> ms
    for r in range(args.rounds):
        order = list(servers.items())[:: 1 if r % 2 == 0 else -1]
        rounds.append({})
        for name, (_, c) in order:
            got = await _load(c, ws, ids, args.clients, args.per_round)
            rounds[-1][name] = got
            for kind, samples in got.items():
                lat[name].setdefault(kind, []).extend(samples)
    # the servers' own CPU per request (user + system, from /proc): a figure the machine's
    # load barely moves, unlike a p95, which contention amplifies
    cpu = {n: _cpu_seconds(p.pid) - cpu0[n] for n, (p, _) in servers.items()}
    for p, c in servers.values():
        await c.aclose()
        p.terminate()
        p.wait(timeout=30)
    res: dict[str, Any] = {"read_clients": args.clients, "read_rounds": args.rounds,
                           "read_load_client": args.load_client}  # fmt: skip
    served = {n: sum(len(v) for v in lat[n].values()) for n in lat}
    per_request = {n: cpu[n] / served[n] for n in servers if served[n] and cpu[n] > 0}
    if "plain" in per_request:
        for n, label in (("plain", "plaintext"), ("enc", "encrypted"),
                         ("enc_python", "python_opener")):  # fmt: skip
            if n in per_request:
                res[f"{label}_server_cpu_ms_per_request"] = round(per_request[n] * 1e3, 3)
        if "enc" in per_request:
            res["server_cpu_per_request_ratio"] = round(
                per_request["enc"] / per_request["plain"], 3
            )
        if "enc_python" in per_request:
            res["python_opener_server_cpu_per_request_ratio"] = round(
                per_request["enc_python"] / per_request["plain"], 3
            )
    for kind in ("single", "bulk100"):
        pp = _pct(lat["plain"][kind], 0.95)
        res[f"plaintext_{kind}_p95_ms"] = pp
        for n, label in (("enc", ""), ("enc_python", "python_opener_")):
            if n not in servers:
                continue
            ep = _pct(lat[n][kind], 0.95)
            res[f"{label or 'encrypted_'}{kind}_p95_ms"] = ep
            res[f"{label}{kind}_p95_ratio"] = round(ep / pp, 3) if pp else None
            # the same ratio within each round (the servers measured back to back), median
            # over the rounds: the machine's speed drifting between rounds cancels out
            pairs = [_pct(r[n][kind], 0.95) / _pct(r["plain"][kind], 0.95) for r in rounds]
            res[f"{label}{kind}_p95_ratio_per_round_median"] = round(statistics.median(pairs), 3)
            res[f"{label}{kind}_p95_ratio_per_round"] = [round(x, 3) for x in pairs]
        res[f"{kind}_samples"] = len(lat["enc"][kind])
    return res


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` and its reaped children so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def _under_load(args: Any, db: Any, keys: dict[str, str], ws: str, ids: list[str],
                      procs: list[Any]) -> dict[str, Any]:  # fmt: skip
    proc, base = _serve(db, keys)
    procs.append(proc)
    c = _client(base)
    await _wait_phase(c, "backfill")
    await _load(c, ws, ids, args.clients, args.per_round // 2)  # warm-up
    idle: list[float] = []
    for _ in range(max(2, args.rounds // 2)):
        idle += (await _load(c, ws, ids, args.clients, args.per_round))["single"]
    await asyncio.sleep(1.5)  # a heartbeat with the idle p95: the backfill's baseline
    env = {**os.environ, **keys, "DATABASE_URL": db.render_as_string(hide_password=False)}
    started, wall_started = time.perf_counter(), time.time()
    bf = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dualwrite.cli", "backfill", "--migration", "clients_pii",
        "--mode", "encrypt", "--once", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    during: list[tuple[float, list[float]]] = []  # (wall clock at the chunk's start, samples)
    fleet: list[float] = []  # the heartbeat's recent_p95_ms (what the budget reads)
    waiter = asyncio.create_task(bf.communicate())
    from dualwrite.db import make_engine

    watch = make_engine(db, pool_size=1)
    try:
        while not waiter.done():
            at = time.time()
            during.append((at, (await _load(c, ws, ids, args.clients, 50))["single"]))
            w = await _raw(watch)
            got = await w.fetchval("SELECT max(recent_p95_ms) FROM dualwrite_instances")
            await w.close()
            if got is not None:
                fleet.append(float(got))
    finally:
        await watch.dispose()
    took = time.perf_counter() - started
    stdout, stderr = await waiter  # progress lines, and the logs (backfill_started)
    await c.aclose()
    proc.terminate()
    proc.wait(timeout=30)
    states: dict[str, int] = {}
    budget = baseline = budgets = None
    # wall clock of the backfill's start (after its process start-up: imports, connections)
    first_batch = wall_started
    for line in stdout.decode().splitlines() + stderr.decode().splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if doc.get("event") == "backfill_started":
                first_batch = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()
            elif doc.get("event") == "latency":
                states[doc.get("state")] = states.get(doc.get("state"), 0) + 1
            elif doc.get("event") == "latency_budget":
                budget, baseline = doc.get("budget_ms"), doc.get("baseline_p95_ms")
                budgets = doc.get("budgets")  # per route (a fleet of this dualwrite)
    ip = _pct(idle, 0.95)
    dp = _pct([x for _, chunk in during for x in chunk], 0.95)
    rp = _pct([x for at, chunk in during if at >= first_batch for x in chunk], 0.95)
    return {
        "idle_single_p95_ms": ip,
        "during_backfill_single_p95_ms": rp,
        "during_backfill_p95_ratio": round(rp / ip, 3) if ip and rp else None,
        "during_backfill_incl_process_start_p95_ms": dp,
        "during_backfill_incl_process_start_p95_ratio": round(dp / ip, 3) if ip else None,
        "under_load_process_start_s": round(first_batch - wall_started, 2),
        "under_load_backfill_rows_per_s": round(args.rows / took),
        "under_load_backfill_s": round(took, 1),
        "under_load_latency_budget_ms": budget,
        "under_load_latency_budgets_ms": budgets,
        "under_load_fleet_p95_baseline_ms": baseline,
        "under_load_fleet_p95_during_max_ms": max(fleet, default=None),
        "under_load_fleet_p95_during_median_ms": sorted(fleet)[len(fleet) // 2] if fleet else None,
        "under_load_latency_transitions": states,
        "under_load_backfill_exit": bf.returncode,
    }


async def _vs_sql(args: Any, e_sql: Any, e_bfs: Any, cipher: Any, bidx: Any,
                  s: Any) -> dict[str, Any]:  # fmt: skip
    from clients_service.schema import CLIENTS_PII as spec
    from dualwrite.backfill import Backfiller, BackfillOptions
    from dualwrite.crypto.providers import load_blind_index_key
    from dualwrite.phases import BackfillMode

    key = load_blind_index_key(s)  # the bench's own throwaway key
    conn = await _raw(e_sql)
    try:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
            mac, how = "hmac({m}, $3::bytea, 'sha256')", "pgcrypto hmac"
        except Exception:  # this server has no pgcrypto: the same HMAC from core sha256
            mac, how = "sha256($4::bytea || sha256($3::bytea || {m}))", "core sha256 HMAC"
        ipad = bytes(b ^ 0x36 for b in key.ljust(64, b"\0"))
        opad = bytes(b ^ 0x5C for b in key.ljust(64, b"\0"))
        probe = mac.format(m="convert_to('x', 'UTF8')")
        params = (key,) if "hmac(" in mac else (ipad, opad)
        got = await conn.fetchval(
            f"SELECT {probe.replace('$3', '$1').replace('$4', '$2')}", *params
        )
        assert bytes(got) == hmac.digest(key, b"x", "sha256"), "SQL HMAC differs from HMAC-SHA256"
        items = [f"{f.ciphertext_column} = convert_to({f.plaintext_column}, 'UTF8')"
                 for f in spec.fields]  # fmt: skip
        norm = {"email": "lower(btrim({c}))", "phone": "regexp_replace({c}, '[^0-9]', '', 'g')"}
        for f in spec.fields:
            if f.bidx_column:
                m = f"convert_to({norm[f.blind_index].format(c=f.plaintext_column)}, 'UTF8')"
                items.append(f"{f.bidx_column} = substring({mac.format(m=m)} from 1 for 16)")
        pk, t = spec.primary_key, spec.table
        sql = (f"WITH s AS (SELECT {pk} FROM {t} WHERE {pk} > $1 ORDER BY {pk} LIMIT $2), "
               f"u AS (UPDATE {t} SET {', '.join(items)} FROM s WHERE {t}.{pk} = s.{pk}) "
               f"SELECT max({pk}::text)::uuid FROM s")  # fmt: skip
        await conn.execute("CHECKPOINT")
        stmt = await conn.prepare(sql)
        last: Any = "00000000-0000-0000-0000-000000000000"
        t0 = time.perf_counter()
        while (nxt := await stmt.fetchval(last, args.batch_size, *params)) is not None:
            last = nxt
        sql_s = time.perf_counter() - t0
    finally:
        await conn.close()
    sql_rate = args.rows / sql_s
    out: dict[str, Any] = {"sql_copy_hmac": how, "sql_copy_rows_per_s": round(sql_rate),
                           "batch_size": args.batch_size}  # fmt: skip
    for e_bf, defer, name in zip(e_bfs, (False, True), ("backfill", "backfill_deferred"),
                                 strict=True):  # fmt: skip
        # deferred: the blind-index indexes dropped for the pass, rebuilt (timed) after it
        await _checkpoint(e_bf)
        opts = BackfillOptions(mode=BackfillMode.ENCRYPT, batch_size=args.batch_size,
                               defer_indexes=defer)  # fmt: skip
        t0 = time.perf_counter()
        report = await Backfiller(e_bf, "clients_pii", cipher, bidx, opts).run()
        bf_rate = report.rows_done / (time.perf_counter() - t0)
        out[f"{name}_rows_per_s"] = round(bf_rate)
        out[f"{name}_vs_sql_copy"] = round(bf_rate / sql_rate, 3)
    return out
