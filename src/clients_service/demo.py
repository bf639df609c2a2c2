"""``dualwrite demo``: the whole migration of the reference ``clients`` table, under live traffic.

One command, no set-up: it starts (or reuses) the embedded PostgreSQL, creates a fresh
``dualwrite_demo`` database, applies the revisions up to the expand, seeds plaintext clients,
serves the reference API on a loopback port and keeps writing to it (creates and updates) while
it walks every phase through the real guards::

    plaintext → dual_write → backfill (encrypt + full verify + Locust gate)
              → read_switch (soak + gate) → contract (purge) → finalized (drop plaintext)
              → rewrite (VACUUM FULL, explicit small offline budget) → remanence scan

At the end it reads every client the traffic wrote back through the API and compares it with the
last value written: zero lost writes is the point, and zero residual plaintext in the table's
files the other. Without configured keys it generates throwaway ones (and says so); soak time
is shortened to a few seconds for the demo. The rewrite is granted an offline lock budget of
:data:`REWRITE_BUDGET_SECONDS` because this is a demo table (pg_repack is used instead when it
can run): a production finalize gets none unless the operator grants it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import os
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service import gate as reference_gate
from clients_service.traffic import Traffic
from dualwrite.backfill import Backfiller, BackfillOptions, BackfillReport
from dualwrite.config import Settings
from dualwrite.control import gate as gate_mod
from dualwrite.control import transitions
from dualwrite.control.purge import rewrite_and_scan
from dualwrite.crypto import BlindIndex, FieldCipher, load_blind_index_key, load_keyring
from dualwrite.db import execute_outside_transaction, make_engine, resolve_url
from dualwrite.errors import DualwriteError, GuardsFailedError
from dualwrite.metrics import Metrics
from dualwrite.phases import BackfillMode, Phase
from dualwrite.remanence import RewriteOptions
from dualwrite.schema import migrate
from dualwrite.state import registry, results
from dualwrite.verify import verify

MIGRATION = "clients_pii"
DEMO_DATABASE = "dualwrite_demo"
REWRITE_BUDGET_SECONDS = 10.0

Say = Callable[[str], None]


@dataclass
class DemoSummary:
    rows_seeded: int = 0
    writes_ok: int = 0
    writes_failed: int = 0
    clients_checked: int = 0
    lost_writes: int = 0
    phases: list[str] = field(default_factory=list)
    backfill_rows_per_s: float = 0.0
    gates: list[dict[str, Any]] = field(default_factory=list)
    throwaway_keys: bool = False
    mismatches: int = 0
    rewrite: dict[str, Any] = field(default_factory=dict)
    residual_plaintext: int | None = None
    p95_ms_per_phase: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The summary ``dualwrite demo --json`` prints (one object)."""
        return {
            "rows": self.rows_seeded,
            "phases_passed": self.phases,
            "mismatches": self.mismatches,
            "failed_requests": self.writes_failed,
            "writes_during_migration": self.writes_ok,
            "lost_writes": self.lost_writes,
            "clients_checked": self.clients_checked,
            "backfill_rows_per_s": round(self.backfill_rows_per_s),
            "rewrite": self.rewrite,
            "residual_plaintext": self.residual_plaintext,
            "p95_ms_per_phase": self.p95_ms_per_phase,
            "gates": self.gates,
            "throwaway_keys": self.throwaway_keys,
        }


def demo_settings(base: Settings, url: URL) -> tuple[Settings, bool]:
    """Settings for the demo database; throwaway keys and tokens when none are configured."""
    update: dict[str, Any] = {
        "database_url": url.render_as_string(hide_password=False),
        "soak_seconds": min(base.soak_seconds, 3.0),
        "poll_interval_seconds": min(base.poll_interval_seconds, 0.5),
    }
    throwaway = False
    if not (base.encryption_key or base.encryption_keys or base.encryption_keys_file):
        update["encryption_key"] = base64.b64encode(os.urandom(32)).decode()
        throwaway = True
    if base.blind_index_key is None:
        update["blind_index_key"] = base64.b64encode(os.urandom(32)).decode()
        throwaway = True
    update["api_token"] = base.api_token or secrets.token_urlsafe(24)
    update["admin_token"] = base.admin_token or secrets.token_urlsafe(24)
    return Settings(**{**base.model_dump(), **update}), throwaway


async def fresh_database(base: Settings) -> URL:
    server = resolve_url(base)
    await execute_outside_transaction(
        server,
        f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)",
        f"CREATE DATABASE {DEMO_DATABASE}",
    )
    return server.set(database=DEMO_DATABASE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _move(
    engine: AsyncEngine,
    settings: Settings,
    current_key: str,
    target: Phase,
    reason: str,
    say: Say,
    traffic: Traffic | None = None,
    summary: DemoSummary | None = None,
    timeout: float = 30.0,
) -> None:
    """Change phase through the real guards, retrying while only the fleet has to catch up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = await transitions.change_phase(
                engine,
                MIGRATION,
                target,
                actor="demo",
                reason=reason,
                force=False,
                settings=settings,
                keyring_current=current_key,
            )
            say(f"phase → [bold]{state.phase.value}[/bold] (version {state.version}): {reason}")
            if traffic is not None:
                traffic.phase = state.phase.value
            if summary is not None:
                summary.phases.append(state.phase.value)
            return
        except GuardsFailedError as exc:
            waiting = [f for f in exc.failures if f.name.startswith(("fleet_", "soak_time"))]
            if len(waiting) != len(exc.failures) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def _gate(
    engine: AsyncEngine, base_url: str, token: str, workspace: str, say: Say
) -> dict[str, Any]:
    stats = await asyncio.to_thread(
        gate_mod.run_locust,
        base_url,
        users=4,
        spawn_rate=4,
        duration="8s",
        api_token=token,
        env={"DUALWRITE_GATE_WORKSPACE": workspace},
    )
    verdict = gate_mod.judge(stats, reference_gate.DEFAULT_THRESHOLDS_MS)
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, MIGRATION)
        await results.record_gate(conn, MIGRATION, state.phase, verdict.passed, verdict.summary())
    p95 = ", ".join(
        f"{e.name.split(' ', 1)[1]} p95 {e.p95_ms:.0f} ms"
        for e in verdict.endpoints
        if e.name in reference_gate.DEFAULT_THRESHOLDS_MS
    )
    say(
        f"Locust latency gate in {state.phase.value}: "
        f"{'passed' if verdict.passed else 'FAILED'} ({p95})"
    )
    if not verdict.passed:
        raise DualwriteError("latency gate failed: " + "; ".join(verdict.failures))
    return {"phase": state.phase.value, **verdict.summary()}


async def run_demo(base: Settings, *, rows: int, say: Say) -> DemoSummary:
    """Run the whole migration; raise :class:`DualwriteError` on any failed step."""
    import uvicorn

    summary = DemoSummary()
    url = await fresh_database(base)
    settings, summary.throwaway_keys = demo_settings(base, url)
    if summary.throwaway_keys:
        say(
            "[yellow]no keys configured: generated THROWAWAY keys "
            "for this demo (not saved)[/yellow]"
        )
    keyring = load_keyring(settings)
    cipher = FieldCipher(keyring)
    bidx = BlindIndex(load_blind_index_key(settings), settings.blind_index_bytes)
    current_key = keyring.current.version
    engine = make_engine(url, settings)
    try:
        cfg = migrate.alembic_config()
        await migrate.upgrade(engine, cfg, settings=settings)
        seed = importlib.import_module(settings.reference_seed_module)
        t0 = time.perf_counter()
        summary.rows_seeded = await seed.seed_clients(engine, rows)
        say(
            f"database {DEMO_DATABASE} at revision {await migrate.current(engine, cfg)}; "
            f"seeded {summary.rows_seeded:,} plaintext clients in {time.perf_counter() - t0:.1f}s"
        )

        async with engine.connect() as conn:
            busiest = (
                await conn.execute(
                    text(
                        "SELECT workspace_id FROM clients GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
                    )
                )
            ).scalar_one()
        module_name, _, attr = settings.reference_app.partition(":")
        app = getattr(importlib.import_module(module_name), attr)(settings)
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                raise DualwriteError("the reference API did not start")
            await asyncio.sleep(0.05)
        base_url = f"http://127.0.0.1:{port}"
        token = settings.api_token.get_secret_value() if settings.api_token else ""
        say(f"reference API serving on {base_url}; live traffic starts (creates + updates)")
        client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        traffic = Traffic(client, str(uuid.uuid4()))
        traffic.start()
        try:
            try:
                await _walk(
                    engine,
                    settings,
                    cipher,
                    bidx,
                    current_key,
                    base_url,
                    token,
                    str(busiest),
                    summary,
                    say,
                    traffic,
                )
            finally:
                await traffic.stop()  # before reading back: "last value written" is then final
            summary.writes_ok, summary.writes_failed = traffic.ok, traffic.failed
            summary.p95_ms_per_phase = traffic.p95_ms()
            summary.clients_checked, summary.lost_writes = await traffic.lost_writes()
        finally:
            await client.aclose()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 10)
    finally:
        await engine.dispose()
    return summary


def _backfiller(
    engine: AsyncEngine, cipher: FieldCipher, bidx: BlindIndex
) -> Callable[[BackfillMode], Awaitable[BackfillReport]]:
    async def run(mode: BackfillMode) -> BackfillReport:
        options = BackfillOptions(mode=mode, batch_size=2000)
        return await Backfiller(engine, MIGRATION, cipher, bidx, options, metrics=Metrics()).run()

    return run


async def _walk(
    engine: AsyncEngine,
    settings: Settings,
    cipher: FieldCipher,
    bidx: BlindIndex,
    current_key: str,
    base_url: str,
    token: str,
    workspace: str,
    summary: DemoSummary,
    say: Say,
    traffic: Traffic,
) -> None:
    """Every phase, forward, through the real guards, while traffic runs; then the rewrite
    and the remanence scan."""
    started = time.perf_counter()

    async def move(target: Phase, reason: str) -> None:
        await _move(engine, settings, current_key, target, reason, say, traffic, summary)

    await move(Phase.DUAL_WRITE, "expand applied")
    await move(Phase.BACKFILL, "fleet dual-writes")
    t0 = time.perf_counter()
    backfill = _backfiller(engine, cipher, bidx)
    report = await backfill(BackfillMode.ENCRYPT)
    took = time.perf_counter() - t0
    summary.backfill_rows_per_s = report.rows_done / max(took, 1e-9)
    say(
        f"backfill encrypted {report.rows_done:,} rows in {took:.1f}s "
        f"({summary.backfill_rows_per_s:,.0f} rows/s) while traffic continued"
    )
    async with engine.connect() as conn:
        spec = (await registry.get_migration(conn, MIGRATION)).spec
    result = await verify(engine, spec, cipher, bidx, full=True)
    summary.mismatches = result.problems
    say(f"verify --full: {result.checked:,} rows checked, {result.problems} problems")
    if not result.ok:
        raise DualwriteError("verification found problems")
    summary.gates.append(await _gate(engine, base_url, token, workspace, say))
    await move(Phase.READ_SWITCH, "covered, verified, gate passed")
    summary.gates.append(await _gate(engine, base_url, token, workspace, say))
    await move(Phase.CONTRACT, "soaked, no mismatches")
    report = await backfill(BackfillMode.PURGE)
    say(f"purge cleared plaintext of {report.rows_done:,} rows")
    await move(Phase.FINALIZED, "plaintext purged")
    say(
        f"contract revision applied: plaintext fenced, then columns dropped "
        f"(migration took {time.perf_counter() - started:.1f}s under traffic)"
    )
    options = RewriteOptions("auto", budget=REWRITE_BUDGET_SECONDS)
    purge = await rewrite_and_scan(engine, MIGRATION, settings, cipher, options)
    summary.rewrite = purge.rewrite.as_dict()
    say(purge.rewrite.render())
    if purge.scan is not None:
        summary.residual_plaintext = purge.scan.residual_plaintext
        say(
            f"remanence scan ({purge.scan.method}): residual plaintext "
            f"{purge.scan.residual_plaintext} of {purge.scan.values_searched} sampled values, "
            f"{purge.scan.bytes_scanned:,} bytes scanned"
        )
