"""Online schema steps under a long transaction, and killed at every step.

A session that keeps a transaction open on ``clients`` (an open request, a report, a forgotten
``psql``) must not make live reads wait behind the expand's or the finalize's DDL for longer
than the lock timeout (500 ms by default; the old single 5 s attempt stalled them 5 s and then
failed), the step must complete once that transaction ends, and a run killed at any step must
converge when run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from dualwrite.db import connect_raw, make_engine
from dualwrite.schema import sql as schema_sql
from dualwrite.testing import DatabaseFactory
from tests.harness.locks import OpenTransaction, ReadProbe
from tests.harness.processes import environment, kill, start_cli
from tests.harness.steps import StepBarrier
from tests.integration.finalize_helpers import purged_in_contract

LOCK_TIMEOUT_S = 0.5
STALL_BOUND_S = 4 * LOCK_TIMEOUT_S  # generous; the replaced code stalled reads 5 s
PROBE = "SELECT id, workspace_id FROM clients ORDER BY id LIMIT 5"
EXPAND_STEPS = [
    "add_columns",
    "drop_not_null",
    "stale_guard",
    "index:ix_clients_email_bidx",
    "index:ix_clients_phone_bidx",
    "register",
]
UNEXPAND_STEPS = [
    "drop_stale_guard",
    "drop_key_guard",
    "drop_index:ix_clients_email_bidx",
    "drop_index:ix_clients_phone_bidx",
    "drop_columns",
    "restore_not_null",
    "unregister",
]
CONTRACT_STEPS = [
    "preflight",
    "fence",
    "drop_index:ix_clients_workspace_email",
    "drop_index:ix_clients_workspace_lastname_firstname",
    "key_guard",
    "drop_plaintext",
    "drop_stale_guard_function",
]


@pytest.fixture
async def before_expand(db_factory: DatabaseFactory) -> AsyncIterator[tuple[URL, AsyncEngine]]:
    url = await db_factory.create("0002")
    engine = make_engine(url, pool_size=3)
    await seed_clients(engine, 2_000, workspaces=2)
    yield url, engine
    await engine.dispose()
    await db_factory.drop(url)


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await start_cli(env, *args)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def blocked_by(engine: AsyncEngine, pid: int, proc: asyncio.subprocess.Process) -> None:
    """Wait until some session waits for ``pid`` (the command is at work and blocked)."""
    conn = await connect_raw(engine)
    try:
        for _ in range(600):
            assert proc.returncode is None, "the command ended before it ever waited"
            if await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
            ):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("nothing ever waited for the long transaction")
    finally:
        await conn.close()


async def under_long_transaction(
    engine: AsyncEngine, env: dict[str, str], *args: str
) -> tuple[float, str, int]:
    """Run ``dualwrite <args>`` while a REPEATABLE READ transaction stays open on clients (2.5 s
    after the command first waits for it) and another connection keeps reading; returns the
    probes' worst wait, stderr and the holder's pid. The command must still be waiting when the
    transaction ends, then succeed."""
    async with ReadProbe(engine, PROBE) as probe:
        async with OpenTransaction(engine, "clients", "repeatable read") as holder:
            assert holder.conn is not None
            pid = holder.conn.get_server_pid()
            proc = await start_cli(env, *args)
            await blocked_by(engine, pid, proc)  # the command reached the table and waits
            await asyncio.sleep(2.5)
            assert proc.returncode is None, "the step should still be waiting for the holder"
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert not probe.errors and probe.count > 20
    return probe.worst, err.decode(), pid


async def test_expand_under_a_long_transaction_keeps_reads_flowing_then_completes(
    before_expand: tuple[URL, AsyncEngine],
) -> None:
    url, engine = before_expand
    worst, err, pid = await under_long_transaction(engine, environment(url), "db", "upgrade")
    print(f"expand: worst live-read wait {worst * 1000:.0f} ms under a long transaction")
    assert worst < STALL_BOUND_S
    assert f"held by pid {pid} (idle in transaction" in err  # the blocker is named
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar() == (
            "0003"
        )


async def test_finalize_under_a_long_transaction_keeps_reads_flowing_then_completes(
    database_url: URL, engine: AsyncEngine
) -> None:
    await purged_in_contract(engine)
    env = environment(database_url)
    worst, err, pid = await under_long_transaction(
        engine, env, "finalize", "clients_pii", "--reason", "purged", "--rewrite", "none"
    )
    print(f"finalize: worst live-read wait {worst * 1000:.0f} ms under a long transaction")
    assert worst < STALL_BOUND_S
    assert f"pid {pid} (idle in transaction" in err
    async with engine.connect() as conn:
        phase = (await conn.execute(text("SELECT phase FROM dualwrite_migrations"))).scalar()
        left = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.columns WHERE table_name = "
                    "'clients' AND column_name = ANY(:c)"
                ),
                {"c": list(CLIENTS_PII.field_names)},
            )
        ).scalar()
    assert phase == "finalized" and left == 0


async def kill_at_every_step(
    engine: AsyncEngine, env: dict[str, str], operation: str, steps: list[str], *args: str
) -> None:
    """Run ``dualwrite <args>`` once per step, each run SIGKILLed when it reaches that step
    (every earlier step done, this one not begun), then once more to the end."""
    for step in steps:
        async with StepBarrier(engine, "clients_pii", operation, step) as barrier:
            proc = await start_cli(env, *args)
            await barrier.reached(proc)
            await kill(proc)
    code, err = await run_cli(env, *args)
    assert code == 0, err[-2000:]


async def test_expand_and_its_downgrade_killed_at_every_step_converge_and_restore_not_null(
    before_expand: tuple[URL, AsyncEngine],
) -> None:
    url, engine = before_expand
    env = environment(url)
    await kill_at_every_step(engine, env, "expand", EXPAND_STEPS, "db", "upgrade")
    async with engine.connect() as conn:
        nullable = dict(
            (
                await conn.execute(
                    text(
                        "SELECT column_name, is_nullable FROM information_schema.columns "
                        "WHERE table_name = 'clients'"
                    )
                )
            ).all()
        )
        notes = (await conn.execute(text("SELECT schema_notes FROM dualwrite_migrations"))).scalar()
        valid = (
            await conn.execute(
                text(
                    "SELECT bool_and(indisvalid), count(*) FROM pg_index WHERE indexrelid IN "
                    "('ix_clients_email_bidx'::regclass, 'ix_clients_phone_bidx'::regclass)"
                )
            )
        ).one()
        trigger = (
            await conn.execute(
                text(schema_sql.TRIGGER_ENABLED_SQL),
                {"g": schema_sql.STALE_GUARD_TRIGGER, "t": "clients"},
            )
        ).scalar()
    assert nullable["first_name"] == "YES" and nullable["email_encrypted"] == "YES"
    assert notes == {"not_null": ["first_name", "last_name"]}  # recorded before the change
    assert tuple(valid) == (True, 2) and trigger == "A"

    # the downgrade, killed at every step too, still restores what the expand recorded
    await kill_at_every_step(engine, env, "unexpand", UNEXPAND_STEPS, "db", "downgrade", "0002")
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT column_name, is_nullable FROM information_schema.columns "
                "WHERE table_name = 'clients'"
            )
        )
        after = dict(rows.all())
        checks = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM pg_constraint WHERE conrelid = 'clients'::regclass "
                    "AND contype = 'c'"
                )
            )
        ).scalar()
    assert after["first_name"] == "NO" and after["last_name"] == "NO"
    assert after["email"] == "YES" and "email_encrypted" not in after
    assert checks == 0  # the temporary CHECK ... IS NOT NULL constraints are gone


async def test_finalize_killed_at_every_step_converges(
    database_url: URL, engine: AsyncEngine
) -> None:
    await purged_in_contract(engine)
    env = environment(database_url)
    args = ("finalize", "clients_pii", "--reason", "purged", "--rewrite", "none")
    await kill_at_every_step(engine, env, "contract", CONTRACT_STEPS, *args)
    async with engine.connect() as conn:
        phase = (await conn.execute(text("SELECT phase FROM dualwrite_migrations"))).scalar()
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        key_guard = (
            await conn.execute(
                text(schema_sql.TRIGGER_ENABLED_SQL),
                {"g": schema_sql.KEY_GUARD_TRIGGER, "t": "clients"},
            )
        ).scalar()
    assert (phase, version, key_guard) == ("finalized", "0004", "A")

    # and back: the downgrade re-adds the columns with their registered types (the spec's,
    # the one record of a field's type) and the dropped indexes
    code, err = await run_cli(env, "phase", "set", "clients_pii", "contract", "--reason", "drill")
    assert code == 0, err[-2000:]
    async with engine.connect() as conn:
        kinds = dict(
            (
                await conn.execute(
                    text(
                        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = 'clients'::regclass AND attnum > 0 "
                        "AND NOT attisdropped"
                    )
                )
            ).all()
        )
        indexes = {
            r[0]
            for r in await conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'clients'")
            )
        }
    assert kinds["first_name"] == "character varying(200)" and kinds["medical_history"] == "text"
    assert kinds["phone"] == CLIENTS_PII.field("phone").type == "character varying(50)"
    assert {"ix_clients_workspace_email", "ix_clients_workspace_lastname_firstname"} <= indexes
