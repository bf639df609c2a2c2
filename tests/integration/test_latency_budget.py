"""The backfill's latency budget on a real PostgreSQL: the fleet's heartbeats carry a p95 per
route, the budget is kept per route, and why the backfill is held shows in ``dualwrite status``.

Instances are written the way they heartbeat (SQL rows in ``dualwrite_instances``); the guard
runs with its real source (:func:`~dualwrite.backfill.latency.fleet_latency`) and its real
recorder (the checkpoint row), only the clock is a fake one (no timing).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from dualwrite.backfill.latency import (
    LatencyGuard,
    LatencyPolicy,
    fleet_latency,
    throttle_recorder,
)
from dualwrite.cli import app as cli_app
from dualwrite.db import connect_raw, make_engine
from dualwrite.schema import state_revisions
from dualwrite.state import checkpoints
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1

NAME = "clients_pii"
SINGLE, BULK = "GET /workspaces/{ws}/clients/{id}", "GET /workspaces/{ws}/clients"


async def raw(url: URL) -> asyncpg.Connection:
    engine = make_engine(url, pool_size=1)
    try:
        return await connect_raw(engine)
    finally:
        await engine.dispose()


async def report_instance(
    conn: asyncpg.Connection, instance: str, routes: dict[str, tuple[float, int]] | None,
    overall: float | None = None,
) -> None:  # fmt: skip
    """What an API instance's heartbeat writes (``routes``: None for an older dualwrite)."""
    doc = None if routes is None else json.dumps(
        {r: {"p95_ms": p95, "n": n} for r, (p95, n) in routes.items()}
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO dualwrite_instances (instance_id, migration, role, observed_phase, "
        "observed_version, key_versions, recent_p95_ms, recent_latency) VALUES ($1, $2, 'api', "
        "'backfill', 1, '{v1}', $3, $4::jsonb) ON CONFLICT (instance_id, migration) DO UPDATE "
        "SET recent_p95_ms = excluded.recent_p95_ms, recent_latency = excluded.recent_latency, "
        "last_seen = clock_timestamp()",
        instance, NAME, overall, doc,
    )  # fmt: skip


def status(url: URL, *extra: str) -> str:
    env = {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "ENCRYPTION_KEYS": f"v1={TEST_KEY_V1}",
        "BLIND_INDEX_KEY": TEST_BIDX_KEY,
    }
    r = CliRunner().invoke(cli_app, ["status", NAME, *extra], env=env)
    assert r.exit_code == 0, r.output
    return r.stdout


async def test_fleet_figures_are_per_route_with_older_instances_as_one_figure(
    database_url: URL,
) -> None:
    conn = await raw(database_url)
    try:
        await report_instance(conn, "a", {SINGLE: (10.0, 200), BULK: (40.0, 50)})
        await report_instance(conn, "b", {SINGLE: (14.0, 100), BULK: (90.0, 3)})
        assert await fleet_latency(conn, NAME) == {SINGLE: 14.0, BULK: 90.0}  # worst instance
        # a route the fleet served under 20 times in the window is noise, not a figure
        assert await fleet_latency(conn, NAME, min_samples=60) == {SINGLE: 14.0}
        await report_instance(conn, "old", None, overall=25.0)  # an older dualwrite
        assert (await fleet_latency(conn, NAME, min_samples=60) or {})["*"] == 25.0
        await conn.execute("UPDATE dualwrite_instances SET last_seen = now() - interval '1 h'")
        assert await fleet_latency(conn, NAME) is None  # nobody heartbeats: nothing to read
    finally:
        await conn.close()


def test_a_slowed_single_read_route_holds_the_backfill_and_status_names_it(
    database_url: URL,
) -> None:
    """Bulk reads dominate the fleet's overall p95; the single reads slow 4x while the bulk
    reads do not. One overall figure would stay within 1.5x; per route the backfill is held,
    and ``dualwrite status`` says why until the route is back within its budget."""
    now = [0.0]
    held: list[tuple[str, float]] = []
    events: list[tuple[str, dict[str, Any]]] = []

    async def hold(why: str, seconds: float) -> bool:
        held.append((why, seconds))
        now[0] += seconds
        return False

    async def scenario() -> list[str]:
        conn = await raw(database_url)
        shown: list[str] = []
        try:
            await checkpoints.start_run(conn, NAME, "encrypt", 0, "run-1", datetime.now(UTC))
            await report_instance(conn, "a", {SINGLE: (10.0, 100), BULK: (60.0, 400)})
            guard = LatencyGuard(
                NAME, LatencyPolicy(min_delay=0.1, max_delay=0.4, check_every=1.0),
                on_event=lambda name, **f: events.append((name, f)), clock=lambda: now[0],
                on_change=throttle_recorder(NAME, "encrypt", 0),
            )  # fmt: skip
            await guard.before_batch(conn, hold)  # the baseline: 15 ms and 90 ms budgets
            assert held == []
            await report_instance(conn, "a", {SINGLE: (40.0, 100), BULK: (62.0, 400)})
            for _ in range(4):
                now[0] += 1.0
                await guard.before_batch(conn, hold)
            shown.append(await asyncio.to_thread(status, database_url, "--json"))
            shown.append(await asyncio.to_thread(status, database_url))
            await report_instance(conn, "a", {SINGLE: (55.0, 100), BULK: (62.0, 400)})
            for _ in range(2):  # still paused: the reason follows the figure of each check
                now[0] += 1.0
                await guard.before_batch(conn, hold)
            shown.append(await asyncio.to_thread(status, database_url, "--json"))
            await report_instance(conn, "a", {SINGLE: (8.0, 100), BULK: (50.0, 400)})
            for _ in range(6):
                now[0] += 1.0
                await guard.before_batch(conn, hold)
            shown.append(await asyncio.to_thread(status, database_url, "--json"))
        finally:
            await conn.close()
        return shown

    held_json, held_text, later_json, resumed_json = asyncio.run(scenario())
    assert events[0][1]["budgets"] == {SINGLE: 15.0, BULK: 90.0}
    assert [f["state"] for n, f in events if n == "latency"][:2] == ["slowed", "paused"]
    assert held and {why for why, _ in held} == {"latency"} and max(s for _, s in held) == 0.4
    (cp,) = json.loads(held_json)["backfill"]["checkpoints"]
    reason = f"{SINGLE} p95 40.0 ms > budget 15.0 ms"
    assert cp["throttle"]["state"] == "paused" and cp["throttle"]["reason"] == reason
    assert cp["throttle"]["at"]  # the database clock
    (later,) = json.loads(later_json)["backfill"]["checkpoints"]
    assert later["throttle"]["reason"] == f"{SINGLE} p95 55.0 ms > budget 15.0 ms"
    states = [f["state"] for n, f in events if n == "latency"]
    assert all(a != b for a, b in itertools.pairwise(states))  # events: changes only
    flat = " ".join(held_text.replace("│", " ").split())
    assert "throttled encrypt/0" in flat and "paused: GET /workspaces/{ws}/clients/{id} p95" in flat
    assert json.loads(resumed_json)["backfill"]["checkpoints"][0]["throttle"] is None
    assert events[-1][1]["state"] == "running"


async def test_on_state_tables_before_revision_4_the_budget_still_runs(
    engine: AsyncEngine, database_url: URL
) -> None:
    """A new backfiller on state tables not yet upgraded (no per-route column, no throttle
    column): the budget reads the instances' overall figure and holds as before; why is in
    its events and gauges only, and the checkpoints still read."""
    async with engine.begin() as conn:
        for statement in state_revisions.downgrade_statements(
            state_revisions.STATE_SCHEMA_VERSION, 3
        ):
            await conn.execute(text(statement))
    now = [0.0]
    held: list[float] = []

    async def hold(why: str, seconds: float) -> bool:
        held.append(seconds)
        return False

    conn = await raw(database_url)
    try:
        await checkpoints.start_run(conn, NAME, "encrypt", 0, "run-1", datetime.now(UTC))
        await conn.execute(
            "INSERT INTO dualwrite_instances (instance_id, migration, role, recent_p95_ms) "
            "VALUES ('old', $1, 'api', 10.0)",
            NAME,
        )
        guard = LatencyGuard(
            NAME, LatencyPolicy(), on_change=throttle_recorder(NAME, "encrypt", 0),
            clock=lambda: now[0],
        )  # fmt: skip
        await guard.before_batch(conn, hold)
        assert guard.throttle is not None and guard.throttle.budgets == {"*": 15.0}
        await conn.execute("UPDATE dualwrite_instances SET recent_p95_ms = 50.0")
        now[0] += 5.0
        await guard.before_batch(conn, hold)
        assert held and guard.reason == "fleet p95 50.0 ms > budget 15.0 ms"
        (cp,) = await checkpoints.list_checkpoints(conn, NAME)
        assert cp.run_id == "run-1" and cp.throttle is None
    finally:
        await conn.close()
