"""Guarded phase changes on real PostgreSQL: CAS races, audit rows, fleet guards, forced moves,
data guards fed by store records, finalize (contract revision) and its rollback."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.seed import seed_clients
from dualwrite.config import Settings
from dualwrite.control.facts import gather_facts
from dualwrite.control.transitions import change_phase, decide
from dualwrite.errors import (
    DualwriteError,
    GuardsFailedError,
    IllegalTransitionError,
    ReasonRequiredError,
    TransitionConflictError,
    UnknownMigrationError,
    UnknownPhaseError,
)
from dualwrite.phases import Phase
from dualwrite.schema import inspector
from dualwrite.state import audit_log, checkpoints, fleet, read_events, registry, results

NAME = "clients_pii"


async def set_phase(engine: AsyncEngine, phase: Phase) -> int:
    """Put the migration in ``phase`` directly (test setup), return the new version."""
    async with engine.begin() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "UPDATE dualwrite_migrations SET phase = :p, version = version + 1, "
                        "changed_at = clock_timestamp() - interval '1 second' WHERE name = :n "
                        "RETURNING version"
                    ),
                    {"p": phase.value, "n": NAME},
                )
            ).scalar_one()
        )


async def state(engine: AsyncEngine) -> registry.MigrationState:
    async with engine.connect() as conn:
        return await registry.get_migration(conn, NAME)


async def audit(engine: AsyncEngine) -> list[audit_log.AuditRecord]:
    async with engine.connect() as conn:
        return list(reversed(await audit_log.list_audit(conn, NAME)))


async def beat(
    engine: AsyncEngine, instance: str, phase: Phase | None, version: int | None
) -> None:
    async with engine.begin() as conn:
        await fleet.heartbeat(
            conn,
            fleet.Heartbeat(instance, NAME, phase, version, frozenset({"v1"}), host="h1", pid=7),
        )


async def move(
    engine: AsyncEngine, settings: Settings, target: str, **kw: object
) -> registry.MigrationState:
    opts: dict[str, object] = {"actor": "test", "reason": None, "force": False}
    opts.update(kw)
    return await change_phase(
        engine,
        NAME,
        target,
        settings=settings,
        keyring_current="v1",
        **opts,  # type: ignore[arg-type]
    )


async def test_applied_change_bumps_version_and_writes_one_audit_row(
    engine: AsyncEngine, settings: Settings
) -> None:
    before = await state(engine)
    new = await move(engine, settings, "dual_write", actor="ops:alice", reason="go")
    assert (new.phase, new.version) == (Phase.DUAL_WRITE, before.version + 1)
    [row] = await audit(engine)
    assert (row.actor, row.from_phase, row.to_phase, row.reason, row.forced, row.outcome) == (
        "ops:alice",
        "plaintext",
        "dual_write",
        "go",
        False,
        "applied",
    )
    assert (row.from_version, row.to_version) == (before.version, new.version)
    assert {g["name"] for g in row.guards} == {
        "schema_expanded",
        "guard_trigger_enabled",
        "fleet_holds_current_key",
    }
    assert all(g["passed"] for g in row.guards)


async def test_fleet_guard_blocks_until_every_live_instance_observed(
    engine: AsyncEngine, settings: Settings
) -> None:
    v_plain = (await state(engine)).version
    await beat(engine, "api-1", Phase.PLAINTEXT, v_plain)
    dual = await move(engine, settings, "dual_write")
    await beat(engine, "api-2", Phase.DUAL_WRITE, dual.version)  # api-1 still lags

    with pytest.raises(GuardsFailedError) as refused:
        await move(engine, settings, "backfill", reason="try")
    assert [f.name for f in refused.value.failures] == ["fleet_observed_dual_write"]
    assert "instance api-1" in str(refused.value)
    assert (await state(engine)).version == dual.version  # no state change
    last = (await audit(engine))[-1]
    assert (last.outcome, last.to_phase, last.to_version, last.reason) == (
        "refused",
        "backfill",
        None,
        "try",
    )
    assert [g["name"] for g in last.guards if not g["passed"]] == ["fleet_observed_dual_write"]

    await beat(engine, "api-1", Phase.DUAL_WRITE, dual.version)
    assert (await move(engine, settings, "backfill")).phase is Phase.BACKFILL


async def test_dead_instance_stops_blocking(engine: AsyncEngine, settings: Settings) -> None:
    v = await set_phase(engine, Phase.DUAL_WRITE)
    await beat(engine, "api-dead", Phase.PLAINTEXT, v - 1)
    with pytest.raises(GuardsFailedError):
        await move(engine, settings, "backfill")
    async with engine.begin() as conn:  # its heartbeat is now older than 3 poll intervals
        await conn.execute(
            text("UPDATE dualwrite_instances SET last_seen = clock_timestamp() - interval '1 hour'")
        )
    assert (await move(engine, settings, "backfill")).phase is Phase.BACKFILL


async def lock_waiters(engine: AsyncEngine) -> int:
    """Backends of this database waiting on a lock (own transaction: pg_stat_activity is
    snapshotted per transaction)."""
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND wait_event_type = 'Lock'"
                    )
                )
            ).scalar_one()
        )


async def test_concurrent_changes_exactly_one_winner(
    engine: AsyncEngine, settings: Settings
) -> None:
    """Both racers read the same version and pass their guards; a third transaction holds the
    row so both reach the CAS before either can commit. Then exactly one wins."""
    async with engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM dualwrite_migrations WHERE name = :n FOR UPDATE"), {"n": NAME}
        )
        racers = [
            asyncio.create_task(move(engine, settings, "dual_write", actor=f"op{i}"))
            for i in (1, 2)
        ]
        async with asyncio.timeout(10):  # wait until both UPDATEs queue on the row lock
            while await lock_waiters(engine) < 2:
                await asyncio.sleep(0.02)
        await holder.rollback()
        results = await asyncio.gather(*racers, return_exceptions=True)
    winners = [r for r in results if isinstance(r, registry.MigrationState)]
    losers = [r for r in results if isinstance(r, TransitionConflictError)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "changed concurrently" in str(losers[0])
    rows = await audit(engine)
    assert [(r.outcome, r.to_phase) for r in rows] == [("applied", "dual_write")]


async def test_stale_expected_version_and_repeated_target_are_conflicts(
    engine: AsyncEngine, settings: Settings
) -> None:
    v = (await state(engine)).version
    await move(engine, settings, "dual_write", expected_version=v)
    with pytest.raises(TransitionConflictError, match="re-read and retry"):
        await move(engine, settings, "backfill", expected_version=v)
    with pytest.raises(TransitionConflictError, match="already in dual_write"):
        await move(engine, settings, "dual_write")


async def test_bad_requests_change_nothing_and_write_no_audit(
    engine: AsyncEngine, settings: Settings
) -> None:
    before = await state(engine)
    with pytest.raises(IllegalTransitionError, match="cannot skip"):
        await move(engine, settings, "backfill", force=True, reason="skip it")
    with pytest.raises(UnknownPhaseError, match="unknown phase 'encrypted'"):
        await move(engine, settings, "encrypted")
    with pytest.raises(UnknownMigrationError):
        await change_phase(
            engine,
            "nope",
            "dual_write",
            actor="t",
            reason=None,
            force=False,
            settings=settings,
            keyring_current="v1",
        )
    with pytest.raises(ReasonRequiredError, match="needs a reason"):
        await move(engine, settings, "dual_write", force=True, reason="  ")
    assert (await state(engine)).version == before.version
    assert await audit(engine) == []


async def test_forced_change_overrides_guards_and_is_marked(
    engine: AsyncEngine, settings: Settings
) -> None:
    await set_phase(engine, Phase.BACKFILL)  # no verification, no gate: guards fail
    with pytest.raises(GuardsFailedError) as refused:
        await move(engine, settings, "read_switch")
    failing = {f.name for f in refused.value.failures}
    assert failing == {"verification_passed", "latency_gate_passed"}
    new = await move(engine, settings, "read_switch", force=True, reason="incident 42")
    assert new.phase is Phase.READ_SWITCH
    last = (await audit(engine))[-1]
    assert (last.outcome, last.forced, last.reason) == ("applied", True, "incident 42")
    assert {g["name"] for g in last.guards if not g["passed"]} == failing


async def test_data_guards_pass_from_recorded_results(
    engine: AsyncEngine, settings: Settings
) -> None:
    await set_phase(engine, Phase.BACKFILL)
    entered = (await state(engine)).changed_at
    async with engine.begin() as conn:
        await checkpoints.save_checkpoint(
            conn,
            checkpoints.Checkpoint(NAME, "encrypt", finished_at=entered - timedelta(seconds=1)),
        )
        await results.record_verification(
            conn,
            results.VerificationRecord(NAME, Phase.BACKFILL, entered, True, 0, 0, 0, 0),
        )
        await results.record_gate(conn, NAME, Phase.BACKFILL, True, {"p95_ms": 3})
    _, decision = await decide(engine, NAME, "read_switch", settings=settings, keyring_current="v1")
    assert decision.allowed, decision.describe()
    assert (await move(engine, settings, "read_switch")).phase is Phase.READ_SWITCH


async def test_read_events_count_only_since_the_switch(
    engine: AsyncEngine, settings: Settings
) -> None:
    v = await set_phase(engine, Phase.READ_SWITCH)
    async with engine.begin() as conn:
        await read_events.add_read_events(conn, NAME, v - 1, {"shadow_mismatch": 5})  # before
        await results.record_gate(conn, NAME, Phase.READ_SWITCH, True, {})
        facts = await gather_facts(conn, await registry.get_migration(conn, NAME), settings, "v1")
    assert facts.shadow_mismatches_since_switch == 0
    async with engine.begin() as conn:
        await read_events.add_read_events(conn, NAME, v, {"read_fallback": 2})
    with pytest.raises(GuardsFailedError, match="2 plaintext fallbacks"):
        await move(engine, settings, "contract")


async def test_finalize_applies_contract_revision_and_rollback_restores_columns(
    engine: AsyncEngine, settings: Settings
) -> None:
    async def plaintext_present() -> bool:
        async with engine.connect() as conn:
            return await inspector.plaintext_columns_present(conn, (await state(engine)).spec)

    await set_phase(engine, Phase.CONTRACT)
    new = await move(engine, settings, "finalized", reason="done")
    assert new.phase is Phase.FINALIZED and not await plaintext_present()
    assert (await audit(engine))[-1].action == "finalize"

    back = await move(engine, settings, "contract", reason="rollback drill")
    assert back.phase is Phase.CONTRACT and await plaintext_present()


async def test_forced_finalize_never_drops_unpurged_plaintext(
    engine: AsyncEngine, settings: Settings
) -> None:
    await seed_clients(engine, 3, workspaces=1)
    v = await set_phase(engine, Phase.CONTRACT)
    with pytest.raises(GuardsFailedError, match="3 rows still hold plaintext"):
        await move(engine, settings, "finalized")
    with pytest.raises(DualwriteError, match="still hold plaintext"):
        await move(engine, settings, "finalized", force=True, reason="yolo")
    assert (await state(engine)).version == v
    async with engine.connect() as conn:
        assert await inspector.plaintext_columns_present(conn, (await state(engine)).spec)
