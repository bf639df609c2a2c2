"""``finalized -> contract`` re-adds the plaintext columns: never writable without the stale
guard (DESIGN §6), and fenced until every instance observed ``contract``. A legacy
plaintext-only write that lands while the columns are back but the guard is not would change
the plaintext and leave the row's ciphertext stale, and from then on reads (ciphertext first)
serve the old value while the plaintext holds the new one.

The window is held open deterministically: a session creates the guard function in a
transaction it keeps open, so the uncontract's ``CREATE FUNCTION`` waits on it; a legacy writer
writes meanwhile, with raw SQL on its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from dualwrite.config import Settings
from dualwrite.control.finalize import contract_revision
from dualwrite.db import connect_raw
from dualwrite.errors import GuardsFailedError
from dualwrite.phases import Phase
from dualwrite.schema import inspector, migrate, sql
from dualwrite.state import fleet
from tests.integration.backfill_helpers import backfill, move_to
from tests.integration.fleet_support import version
from tests.integration.test_rollback import ROWS, decrypted, encrypted_in_read_switch, ids, move


async def waiting_on_lock(engine: AsyncEngine, needle: str, timeout: float = 20) -> bool:
    """True once a session waits on a lock with ``needle`` in its query."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with engine.connect() as conn:
            n = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND position(:needle in query) > 0"
                ),
                {"needle": needle},
            )
        if n:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_plaintext_columns_come_back_only_with_the_stale_guard(
    engine: AsyncEngine, settings: Settings
) -> None:
    await seed_clients(engine, ROWS, workspaces=1)
    await encrypted_in_read_switch(engine, settings)
    await move_to(engine, Phase.CONTRACT)
    await backfill(engine, settings, "purge")
    assert (await move(engine, settings, "finalized", reason="purged")).phase is Phase.FINALIZED
    first = (await ids(engine))[0]
    before = await decrypted(settings, engine, first, "first_name")

    function = sql.stale_guard_function(CLIENTS_PII)
    holder = await connect_raw(engine)
    writer = await connect_raw(engine)
    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NEW; END $$"
        )
        back = asyncio.create_task(move(engine, settings, "contract"))
        assert await waiting_on_lock(engine, "stale_guard"), (
            "the uncontract never reached the guard"
        )
        refused: Exception | None = None
        try:  # the legacy writer, while the uncontract waits to install the guard
            await writer.execute(
                "SET lock_timeout = '2s'; "
                f"UPDATE clients SET first_name = 'Late' WHERE id = '{first}'"
            )
        except (asyncpg.UndefinedColumnError, asyncpg.LockNotAvailableError) as exc:
            refused = exc
        await hold.rollback()
        assert (await back).phase is Phase.CONTRACT
    finally:
        with contextlib.suppress(Exception):
            await holder.close()
        await writer.close()

    assert refused is not None, "a plaintext write landed while the stale guard was missing"
    async with engine.connect() as conn:
        plain, ct = (
            await conn.execute(
                text("SELECT first_name, first_name_encrypted FROM clients WHERE id = :i"),
                {"i": first},
            )
        ).one()
    assert plain is None and ct is not None
    assert await decrypted(settings, engine, first, "first_name") == before
    assert await _stale_trigger(engine) == "A"

    # an instance still in finalized neither reads nor writes plaintext: until the fleet has
    # observed contract, the fence keeps legacy plaintext out, loudly
    finalized_version = (await version(engine)) - 1
    await _beat(engine, Phase.FINALIZED, finalized_version)
    with pytest.raises(asyncpg.CheckViolationError):
        await _legacy_write(engine, first, "Late")
    with pytest.raises(GuardsFailedError) as refused_move:
        await move(engine, settings, "read_switch")
    assert [f.name for f in refused_move.value.failures] == ["fleet_observed_contract"]
    with pytest.raises(asyncpg.CheckViolationError):  # a refused move keeps the fence
        await _legacy_write(engine, first, "Late")

    await _beat(engine, Phase.CONTRACT, finalized_version + 1)
    assert (await move(engine, settings, "read_switch")).phase is Phase.READ_SWITCH
    # the fence is gone; the stale guard clears the ciphertext a legacy write makes stale
    await _legacy_write(engine, first, "Late")
    async with engine.connect() as conn:
        ct = await conn.scalar(
            text("SELECT first_name_encrypted FROM clients WHERE id = :i"), {"i": first}
        )
    assert ct is None


async def _legacy_write(engine: AsyncEngine, key: object, name: str) -> None:
    conn = await connect_raw(engine)
    try:
        await conn.execute("UPDATE clients SET first_name = $1 WHERE id = $2", name, key)
    finally:
        await conn.close()


async def _beat(engine: AsyncEngine, phase: Phase, version: int) -> None:
    async with engine.begin() as conn:
        await fleet.heartbeat(conn, fleet.Heartbeat(
            "api-7", CLIENTS_PII.name, phase, version, frozenset({"v1"}), host="h7", pid=7,
            poll_interval_seconds=60.0,
        ))  # fmt: skip


async def _stale_trigger(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        value = await conn.scalar(
            text(
                "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'clients'::regclass "
                "AND tgname = :t"
            ),
            {"t": sql.STALE_GUARD_TRIGGER},
        )
    return None if value is None else str(value)


async def test_a_rollback_cut_off_before_alembic_recorded_it_is_redone_and_finalize_drops_again(
    engine: AsyncEngine, settings: Settings
) -> None:
    """The downgrade's schema steps commit on their own; Alembic records the version after
    them. Cut off in between (a terminated backend), the columns are back while Alembic still
    says "contract revision": the rollback must run the downgrade again, or the next finalize
    skips the contract revision and moves to ``finalized`` with the plaintext columns (and
    their legacy writes) still there, unfenced."""
    await seed_clients(engine, ROWS, workspaces=1)
    await encrypted_in_read_switch(engine, settings)
    await move_to(engine, Phase.CONTRACT)
    await backfill(engine, settings, "purge")
    assert (await move(engine, settings, "finalized", reason="purged")).phase is Phase.FINALIZED
    cfg = migrate.alembic_config()
    revision, parent = contract_revision(cfg, CLIENTS_PII.name)
    await migrate.downgrade(engine, cfg, parent, settings=settings)  # the steps ran ...
    async with engine.begin() as conn:  # ... and the version record was lost
        await conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})

    assert (await move(engine, settings, "contract")).phase is Phase.CONTRACT
    assert await migrate.current(engine, cfg) == parent
    assert (await move(engine, settings, "finalized", reason="again")).phase is Phase.FINALIZED
    assert await migrate.current(engine, cfg) == revision
    async with engine.connect() as conn:
        assert not await inspector.plaintext_columns_present(conn, CLIENTS_PII)
