"""Fleet liveness with real service processes: each instance is judged by its own poll interval,
a vanished instance blocks the fleet guards for its grace until `dualwrite fleet forget`
(audited), a graceful stop deregisters, and an instance heartbeats only the migrations it
serves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.control.facts import gather_facts
from dualwrite.phases import GuardResult, Phase, evaluate
from dualwrite.state import registry
from tests.conftest import make_settings
from tests.harness.processes import environment
from tests.harness.prometheus import eventually
from tests.integration.clinic_support import create_clinic_schema
from tests.integration.fleet_support import NAME, freeze, heartbeats, move, service, thaw

OPERATOR = make_settings(poll_interval_seconds=2.0)  # the operator's default interval


async def fleet_guard(engine: AsyncEngine, target: Phase) -> GuardResult:
    """The fleet guard of the move to ``target``, judged the way `dualwrite phase set` does."""
    async with engine.connect() as conn:
        state = await registry.get_migration(conn, NAME)
        facts = await gather_facts(conn, state, OPERATOR, "v1")
    decision = evaluate(state.phase, target, facts)
    (guard,) = [g for g in decision.guards if g.name.startswith("fleet_")]
    return guard


async def wait_age(engine: AsyncEngine, instance: str, seconds: float) -> float:
    """Until the heartbeat of ``instance`` is at least ``seconds`` old (database clock)."""
    rows = await eventually(
        lambda: heartbeats(engine, instance),
        lambda rows: bool(rows) and float(rows[0].age) >= seconds,
        timeout=seconds + 30, what=f"{instance}'s heartbeat {seconds}s old",
    )  # fmt: skip
    return float(rows[0].age)


def cli(database_url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualwrite.cli", *args],
        env=environment(database_url, POLL_INTERVAL_SECONDS="2"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_an_instance_polling_every_10s_stays_live_past_the_operators_window(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    async with service(database_url, tmp_path, "slow-api", POLL_INTERVAL_SECONDS="10") as (_, p):
        (row,) = await heartbeats(engine, "slow-api")
        assert (row.observed_phase, row.poll_interval_seconds) == ("plaintext", 10.0)
        freeze(p)  # its next heartbeat would come within 10 s; now none comes at all
        try:
            await move(engine, Phase.DUAL_WRITE, notify=False)
            age = await wait_age(engine, "slow-api", 6.5)  # past 3 x the operator's 2 s
            guard = await fleet_guard(engine, Phase.BACKFILL)
            assert age < 30  # within 3 x its own 10 s: live, whatever the operator polls
            assert not guard.passed
            assert guard.reason.startswith("instance slow-api (host "), guard.reason
            assert "has observed version 1 (plaintext), needs version 2" in guard.reason
        finally:
            thaw(p)


async def test_a_vanished_instance_blocks_until_forgotten_and_forgetting_is_audited(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    async with (
        service(database_url, tmp_path, "gone-api", POLL_INTERVAL_SECONDS="3") as (_, gone),
        service(database_url, tmp_path, "kept-api", POLL_INTERVAL_SECONDS="1") as _,
    ):
        refused = cli(database_url, "fleet", "forget", "kept-api", "--reason", "try")
        assert refused.returncode == 1
        assert "instance kept-api" in refused.stderr and "is live" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

        freeze(gone)
        try:
            await move(engine, Phase.DUAL_WRITE)  # kept-api observes it, gone-api cannot
            await wait_age(engine, "gone-api", 9.5)  # past its 9 s window, within its 18 s grace
            guard = await fleet_guard(engine, Phase.BACKFILL)
            assert not guard.passed
            assert guard.reason.startswith("instance gone-api not heard from for "), guard.reason
            assert "may still be writing" in guard.reason
            assert "`dualwrite fleet forget gone-api`" in guard.reason

            listed = cli(database_url, "fleet", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            assert '"vanished (blocks fleet guards)"' in listed.stdout

            assert not (await fleet_guard(engine, Phase.BACKFILL)).passed  # still in its grace
            done = cli(database_url, "fleet", "forget", "gone-api", "--reason", "host destroyed")
            assert done.returncode == 0, done.stderr
            assert "forgot instance gone-api" in done.stdout
            guard = await fleet_guard(engine, Phase.BACKFILL)
            assert guard.passed, guard.reason
            assert guard.reason == "all 1 live instances are ready"
            async with engine.connect() as conn:
                audit = (
                    await conn.execute(
                        text(
                            "SELECT action, outcome, actor, reason, from_version FROM "
                            "dualwrite_audit WHERE action = 'fleet_forget'"
                        )
                    )
                ).one()
            assert (audit.outcome, audit.from_version) == ("applied", 1)
            assert audit.actor.startswith("cli:")
            assert audit.reason.startswith("forgot instance gone-api")
            assert audit.reason.endswith(": host destroyed")
        finally:
            thaw(gone)


async def test_a_graceful_stop_deregisters(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    async with service(database_url, tmp_path, "api-stop", POLL_INTERVAL_SECONDS="10") as (_, p):
        assert [r.instance_id for r in await heartbeats(engine)] == ["api-stop"]
    assert p.proc.returncode is not None  # SIGTERM: uvicorn's shutdown ran the lifespan's end
    assert await heartbeats(engine) == [], p.output()


async def test_an_instance_heartbeats_only_the_migrations_it_serves(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    await create_clinic_schema(engine)  # a second migration, of a table this service never uses
    async with engine.connect() as conn:
        assert {s.name for s in await registry.list_migrations(conn)} == {NAME, "patients_pii"}
    async with service(database_url, tmp_path, "clients-api", POLL_INTERVAL_SECONDS="0.2"):
        await asyncio.sleep(1.0)  # several heartbeats
        rows = await heartbeats(engine, "clients-api")
    assert [r.migration for r in rows] == [NAME]
