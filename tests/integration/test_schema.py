"""The reference schema on real PostgreSQL: upgrade → downgrade → upgrade, contract refusal,
seeding."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from dualwrite.db import make_engine
from dualwrite.errors import DualwriteError
from dualwrite.schema import migrate
from dualwrite.testing import DatabaseFactory


async def columns(engine: AsyncEngine, table: str) -> dict[str, tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_name = :t"
            ),
            {"t": table},
        )
        return {r[0]: (r[1], r[2]) for r in rows}


async def indexes(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT indexname FROM pg_indexes WHERE tablename = :t"), {"t": table}
        )
        return {r[0] for r in rows}


async def test_upgrade_downgrade_upgrade(db_factory: DatabaseFactory) -> None:
    url = await db_factory.create(revision=None)
    engine = make_engine(url, pool_size=2)
    cfg = migrate.alembic_config()
    try:
        await migrate.upgrade(engine, cfg)
        assert await migrate.current(engine, cfg) == "0003"
        cols = await columns(engine, "clients")
        for f in CLIENTS_PII.fields:
            assert cols[f.ciphertext_column][0] == "bytea"
        assert cols["email_bidx"][0] == "bytea" and cols["phone_bidx"][0] == "bytea"
        assert cols["first_name"][1] == "YES"  # contract writes NULL plaintext
        idx = await indexes(engine, "clients")
        assert {
            "ix_clients_workspace_lastname_firstname",
            "ix_clients_workspace_email",
            "ix_clients_workspace_updated",
            "ix_clients_workspace_active",
            "ix_clients_workspace_id_active",
            "ix_clients_email_bidx",
            "ix_clients_phone_bidx",
        } <= idx
        async with engine.connect() as conn:
            phase = (await conn.execute(text("SELECT phase FROM dualwrite_migrations"))).scalar()
        assert phase == "plaintext"

        await migrate.downgrade(engine, cfg, "0001")
        assert await migrate.current(engine, cfg) == "0001"
        cols = await columns(engine, "clients")
        assert "first_name_encrypted" not in cols and "email_bidx" not in cols
        assert await columns(engine, "dualwrite_migrations") == {}
        await migrate.downgrade(engine, cfg, "base")
        assert await columns(engine, "clients") == {}

        await migrate.upgrade(engine, cfg)
        assert await migrate.current(engine, cfg) == "0003"
    finally:
        await engine.dispose()
        await db_factory.drop(url)


async def test_downgrade_of_expand_restores_not_null(engine: AsyncEngine) -> None:
    cfg = migrate.alembic_config()
    await migrate.downgrade(engine, cfg, "0002")
    cols = await columns(engine, "clients")
    assert cols["first_name"][1] == "NO" and cols["last_name"][1] == "NO"
    assert cols["email"][1] == "YES"


async def test_db_upgrade_stops_before_contract(engine: AsyncEngine) -> None:
    cfg = migrate.alembic_config()
    assert migrate.expand_target(cfg) == "0003"
    with pytest.raises(DualwriteError, match="contract revision"):
        await migrate.upgrade(engine, cfg, "head")
    assert await migrate.current(engine, cfg) == "0003"


async def test_contract_revision_refuses_outside_contract_phase(engine: AsyncEngine) -> None:
    cfg = migrate.alembic_config()
    with pytest.raises(DualwriteError, match="phase plaintext"):
        await migrate.upgrade(engine, cfg, "0004", allow_contract=True)
    assert await migrate.current(engine, cfg) == "0003"
    assert "first_name" in await columns(engine, "clients")


async def test_seed_writes_realistic_plaintext(engine: AsyncEngine) -> None:
    n = await seed_clients(engine, 2_000, workspaces=4, seed=3)
    assert n == 2_000
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT workspace_id), min(length(medical_history)), "
                    "bool_and(email LIKE '%@%'), "
                    "count(*) FILTER (WHERE first_name_encrypted IS NOT NULL) "
                    "FROM clients"
                )
            )
        ).one()
    assert row[0] == 2_000 and row[1] == 4
    assert row[2] >= 100  # a few hundred bytes of history
    assert row[3] is True
    assert row[4] == 0  # seeding writes plaintext only


async def test_rerun_of_a_failed_expand_rebuilds_an_invalid_index(engine: AsyncEngine) -> None:
    # A concurrent index build that failed leaves the index INVALID and the revision unapplied.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                "'ix_clients_email_bidx'::regclass"
            )
        )
        await conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    cfg = migrate.alembic_config()
    await migrate.upgrade(engine, cfg)
    assert await migrate.current(engine, cfg) == "0003"
    async with engine.connect() as conn:
        valid = (
            await conn.execute(
                text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = 'ix_clients_email_bidx'"
                )
            )
        ).scalar_one()
    assert valid is True


async def test_plain_alembic_runs_the_expand_and_refuses_the_contract(
    db_factory: DatabaseFactory,
) -> None:
    """``alembic upgrade`` without dualwrite's CLI: the expand runs through the same online
    steps; the contract revision refuses before finalize, changing nothing."""
    import asyncio
    import sys

    from tests.harness.processes import environment

    url = await db_factory.create(revision=None)
    env = environment(url)

    async def alembic(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alembic", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return int(proc.returncode or 0), out.decode() + err.decode()

    engine = make_engine(url, pool_size=1)
    try:
        code, err = await alembic("upgrade", "0003")
        assert code == 0, err[-2000:]
        cfg = migrate.alembic_config()
        assert await migrate.current(engine, cfg) == "0003"
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE dualwrite_migrations SET phase = 'contract'"))
        code, err = await alembic("upgrade", "head")
        failed = [line for line in err.splitlines() if line.startswith("FAILED:")]
        assert code != 0 and len(failed) == 1 and "Traceback" not in err  # Alembic's one line
        assert "runs only through `dualwrite finalize clients_pii`" in failed[0]
        assert await migrate.current(engine, cfg) == "0003"
        assert "email" in await columns(engine, "clients")
        assert "ix_clients_workspace_email" in await indexes(engine, "clients")
    finally:
        await engine.dispose()
        await db_factory.drop(url)
