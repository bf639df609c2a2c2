"""dualwrite's state tables upgrade in place: a migration in flight survives a new dualwrite."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.config import Settings
from dualwrite.errors import ConfigError
from dualwrite.phases import Phase
from dualwrite.runtime.watcher import PhaseWatcher
from dualwrite.schema import migrate, state_revisions
from dualwrite.state import fleet, registry, versions
from tests.integration.backfill_helpers import move_to


async def back_to_revision_1(engine: AsyncEngine) -> None:
    """What a database set up by the first dualwrite release looks like."""
    async with engine.begin() as conn:
        for statement in state_revisions.downgrade_statements(
            state_revisions.STATE_SCHEMA_VERSION, 1
        ):
            await conn.execute(text(statement))
        assert await versions.current_state_version(conn) == 1


async def test_db_upgrade_brings_old_state_tables_up_to_date_mid_migration(
    engine: AsyncEngine, settings: Settings
) -> None:
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    await back_to_revision_1(engine)
    async with engine.connect() as conn:
        before = await registry.get_migration(conn, "clients_pii")

    await migrate.upgrade(engine, migrate.alembic_config(), settings=settings)

    async with engine.connect() as conn:
        assert await versions.current_state_version(conn) == state_revisions.STATE_SCHEMA_VERSION
        after = await registry.get_migration(conn, "clients_pii")
    assert (after.phase, after.version) == (Phase.BACKFILL, before.version)
    await migrate.upgrade(engine, migrate.alembic_config(), settings=settings)  # idempotent


async def test_an_instance_refuses_to_start_on_state_tables_too_old_for_it(
    engine: AsyncEngine, settings: Settings
) -> None:
    await back_to_revision_1(engine)
    watcher = PhaseWatcher(engine, settings, key_versions=frozenset({"v1"}), listen=False)
    with pytest.raises(ConfigError, match="run `dualwrite db upgrade`"):
        await watcher.start()


async def test_an_old_instance_reports_no_interval_and_new_columns_stay_null(
    engine: AsyncEngine,
) -> None:
    """An instance of the first release writes the original columns only."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO dualwrite_instances (instance_id, migration, observed_phase, "
                "observed_version, key_versions) VALUES ('old-1', 'clients_pii', 'plaintext', 1, "
                "'{v1}')"
            )
        )
        (seen,) = await fleet.list_instances(conn, "clients_pii")
    assert seen.poll_interval_seconds is None
    assert seen.observed_at is None
