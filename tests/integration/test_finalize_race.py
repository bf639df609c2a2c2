"""The finalize race: a legacy writer (not dualwrite: raw SQL on its own connection) stores
plaintext while finalize runs. Its write is refused with an error or kept -- never dropped
with the columns (the replaced finalize counted under a plain read, then dropped them, and a
transaction open during that count lost its write)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from dualwrite.config import Settings
from dualwrite.control.transitions import change_phase
from dualwrite.db import connect_raw
from dualwrite.errors import SchemaStepError
from dualwrite.schema import sql as schema_sql
from tests.harness.processes import environment, kill, start_cli
from tests.harness.steps import StepBarrier
from tests.integration.finalize_helpers import purged_in_contract

LATE = "late.write@example.org"


async def stored_email(engine: AsyncEngine, rid: uuid.UUID) -> object:
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT email FROM clients WHERE id = :i"), {"i": rid})
        return found.scalar()


async def test_a_legacy_write_open_during_finalize_is_kept_and_finalize_refuses(
    engine: AsyncEngine, settings: Settings
) -> None:
    rid = await purged_in_contract(engine, 500)
    writer = await connect_raw(engine)
    await writer.execute("BEGIN")
    await writer.execute("UPDATE clients SET email = $1 WHERE id = $2", LATE, rid)
    finalize = asyncio.create_task(
        change_phase(
            engine, "clients_pii", "finalized", actor="test", reason="purged", force=False,
            settings=settings, keyring_current="v1",
        )
    )  # fmt: skip
    await asyncio.sleep(1.5)  # the guards counted 0 rows with plaintext; finalize is at work
    assert not finalize.done()
    await writer.execute("COMMIT")  # the legacy write lands before any column is dropped
    await writer.close()
    with pytest.raises(SchemaStepError, match="1 rows of clients still hold plaintext"):
        await finalize
    assert await stored_email(engine, rid) == LATE  # kept
    async with engine.connect() as conn:
        phase = (await conn.execute(text("SELECT phase FROM dualwrite_migrations"))).scalar()
        fence = (
            await conn.execute(
                text("SELECT count(*) FROM pg_constraint WHERE conname = :n"),
                {"n": schema_sql.fence_name(CLIENTS_PII)},
            )
        ).scalar()
    assert phase == "contract" and fence == 0  # nothing moved; the fence was removed


async def test_a_legacy_write_after_the_fence_is_refused_loudly(
    database_url: URL, engine: AsyncEngine
) -> None:
    rid = await purged_in_contract(engine, 500)
    env = environment(database_url)
    args = ("finalize", "clients_pii", "--reason", "purged", "--rewrite", "none")
    async with StepBarrier(engine, "clients_pii", "contract", "key_guard") as barrier:
        proc = await start_cli(env, *args)
        await barrier.reached(proc)  # fenced and validated, columns not dropped yet
        writer = await connect_raw(engine)
        try:
            with pytest.raises(asyncpg.exceptions.CheckViolationError, match="purged"):
                await writer.execute("UPDATE clients SET email = $1 WHERE id = $2", LATE, rid)
        finally:
            await writer.close()
        await kill(proc)
    assert await stored_email(engine, rid) is None  # the writer got an error, not a silent drop
    proc = await start_cli(env, *args)  # the rerun resumes at key_guard and finishes
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]


async def test_a_move_back_to_read_switch_removes_the_fence_of_an_unfinished_finalize(
    database_url: URL, engine: AsyncEngine, settings: Settings
) -> None:
    rid = await purged_in_contract(engine, 200)
    env = environment(database_url)
    args = ("finalize", "clients_pii", "--reason", "purged", "--rewrite", "none")
    async with StepBarrier(engine, "clients_pii", "contract", "key_guard") as barrier:
        proc = await start_cli(env, *args)
        await barrier.reached(proc)
        await kill(proc)  # fenced, then gone
    back = await change_phase(
        engine, "clients_pii", "read_switch", actor="test", reason="not today", force=False,
        settings=settings, keyring_current="v1",
    )  # fmt: skip
    assert back.phase.value == "read_switch"
    async with engine.connect() as conn:  # the plaintext indexes it had dropped are back
        found = await conn.execute(
            text("SELECT count(*) FROM pg_indexes WHERE tablename = 'clients' AND indexname "
                 "IN ('ix_clients_workspace_email', 'ix_clients_workspace_lastname_firstname')")
        )  # fmt: skip
        assert found.scalar() == 2
    async with engine.begin() as conn:  # read_switch writes plaintext again: nothing refuses it
        await conn.execute(
            text("UPDATE clients SET email = :e WHERE id = :i"), {"e": LATE, "i": rid}
        )
    assert await stored_email(engine, rid) == LATE


async def test_finalize_preflight_lists_each_dependency_on_one_line_and_changes_nothing(
    database_url: URL, engine: AsyncEngine
) -> None:
    await purged_in_contract(engine, 50)
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE VIEW client_contacts AS SELECT id, email, phone FROM clients")
        )
        await conn.execute(text("CREATE UNIQUE INDEX ix_clients_phone_unique ON clients (phone)"))
        await conn.execute(text("ALTER TABLE clients ENABLE ROW LEVEL SECURITY"))
        await conn.execute(
            text("CREATE POLICY own_rows ON clients USING (address IS NULL OR address <> '')")
        )
        await conn.execute(text("CREATE PUBLICATION contacts FOR TABLE clients (id, email)"))
        await conn.execute(
            text(
                "ALTER TABLE clients ADD COLUMN email_domain text "
                "GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED"
            )
        )
    env = environment(database_url)
    proc = await start_cli(
        env, "finalize", "clients_pii", "--reason", "purged", "--rewrite", "none"
    )
    _, err_bytes = await asyncio.wait_for(proc.communicate(), 120)
    err = err_bytes.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith("- ")]
    assert any(line.startswith("- view client_contacts (uses email, phone)") for line in lines)
    assert any("ix_clients_phone_unique (uses phone)" in line for line in lines)
    assert any("policy own_rows" in line and "(uses address)" in line for line in lines)
    assert any(
        line.startswith("- publication of table clients in publication contacts (uses email)")
        for line in lines
    )
    assert "- generated column email_domain of table clients (uses email)" in lines
    assert len(lines) == 5, lines
    async with engine.connect() as conn:
        phase = (await conn.execute(text("SELECT phase FROM dualwrite_migrations"))).scalar()
        kept = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_clients_workspace_email'"
                )
            )
        ).scalar()
    assert phase == "contract" and kept == 1  # refused before the first change
