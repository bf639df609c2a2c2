"""The guard trigger against writers that are not dualwrite: raw SQL, replica-role sessions,
primary-key changes, a disabled trigger, and after the contract."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from dualwrite.config import Settings
from dualwrite.control.transitions import change_phase, decide
from dualwrite.crypto import FieldCipher, load_keyring
from dualwrite.errors import GuardsFailedError
from dualwrite.phases import Phase, next_phase
from dualwrite.schema import inspector
from dualwrite.schema import sql as schema_sql
from tests.conftest import make_settings
from tests.integration.finalize_helpers import purged_in_contract

SPEC = CLIENTS_PII


async def encrypted_row(engine: AsyncEngine) -> uuid.UUID:
    """One client whose email and first name have ciphertexts (what dual-write stores)."""
    cipher = FieldCipher(load_keyring(make_settings()))
    rid = uuid.uuid4()
    ct = cipher.encrypt("old@example.org", table="clients", column="email", row_key=str(rid))
    fn = cipher.encrypt("Ada", table="clients", column="first_name", row_key=str(rid))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO clients (id, workspace_id, first_name, last_name, email, "
                "email_encrypted, first_name_encrypted) VALUES (:i, :w, 'Ada', 'L', "
                "'old@example.org', :ct, :fn)"
            ),
            {"i": rid, "w": uuid.uuid4(), "ct": ct, "fn": fn},
        )
    return rid


async def column(engine: AsyncEngine, rid: uuid.UUID, name: str) -> object:
    async with engine.connect() as conn:
        found = await conn.execute(text(f"SELECT {name} FROM clients WHERE id = :i"), {"i": rid})
        return found.scalar_one()


async def test_replica_role_writer_cannot_leave_a_stale_ciphertext(engine: AsyncEngine) -> None:
    """Logical-replication apply workers and ETL tools write with session_replication_role =
    replica; an ORIGIN trigger would not fire for them."""
    rid = await encrypted_row(engine)
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            text("UPDATE clients SET email = 'new@example.org' WHERE id = :i"), {"i": rid}
        )
    assert await column(engine, rid, "email") == "new@example.org"
    assert await column(engine, rid, "email_encrypted") is None  # backfill picks it up again
    assert await column(engine, rid, "first_name_encrypted") is not None


async def test_trigger_is_enabled_always_and_a_disabled_one_fails_the_expand_guard(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as conn:
        assert (
            await inspector.trigger_enabled(conn, "clients", schema_sql.STALE_GUARD_TRIGGER) == "A"
        )
        assert await inspector.schema_expanded(conn, SPEC)
    async with engine.begin() as conn:
        await conn.execute(
            text(f"ALTER TABLE clients DISABLE TRIGGER {schema_sql.STALE_GUARD_TRIGGER}")
        )
    async with engine.connect() as conn:
        assert not await inspector.schema_expanded(conn, SPEC)
    async with engine.begin() as conn:
        await conn.execute(
            text(f"ALTER TABLE clients ENABLE TRIGGER {schema_sql.STALE_GUARD_TRIGGER}")
        )
    async with engine.connect() as conn:  # ORIGIN only: replica-role writers would bypass it
        assert not await inspector.schema_expanded(conn, SPEC)


async def test_primary_key_change_that_keeps_ciphertexts_is_refused(engine: AsyncEngine) -> None:
    rid = await encrypted_row(engine)
    new = uuid.uuid4()
    with pytest.raises(DBAPIError) as refused:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE clients SET id = :n WHERE id = :i"), {"n": new, "i": rid}
            )
    assert "primary key change on clients must re-encrypt every ciphertext" in str(refused.value)
    assert await column(engine, rid, "email_encrypted") is not None  # nothing changed
    with pytest.raises(DBAPIError):  # replica-role writers are refused as well
        async with engine.begin() as conn:
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
            await conn.execute(
                text("UPDATE clients SET id = :n WHERE id = :i"), {"n": new, "i": rid}
            )


async def test_primary_key_change_that_rewrites_or_clears_ciphertexts_is_allowed(
    engine: AsyncEngine,
) -> None:
    rid = await encrypted_row(engine)
    new = uuid.uuid4()
    cipher = FieldCipher(load_keyring(make_settings()))
    ct = cipher.encrypt("old@example.org", table="clients", column="email", row_key=str(new))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE clients SET id = :n, email_encrypted = :ct, first_name_encrypted = NULL "
                "WHERE id = :i"
            ),
            {"n": new, "i": rid, "ct": ct},
        )
    stored = await column(engine, new, "email_encrypted")
    assert isinstance(stored, bytes)
    got = cipher.decrypt(stored, table="clients", column="email", row_key=str(new))
    assert got == "old@example.org"


async def test_after_the_contract_a_key_guard_still_refuses_orphaning_key_changes(
    engine: AsyncEngine,
) -> None:
    rid = await encrypted_row(engine)
    async with engine.begin() as conn:
        await conn.execute(text(schema_sql.keep_ciphertext_sql()))
        await conn.execute(text("UPDATE clients SET email = NULL, first_name = NULL"))
        for statement in schema_sql.contract_ddl(SPEC):
            await conn.execute(text(statement))
    async with engine.connect() as conn:
        assert await inspector.trigger_enabled(conn, "clients", schema_sql.KEY_GUARD_TRIGGER) == "A"
        assert await inspector.schema_expanded(conn, SPEC)
    with pytest.raises(DBAPIError) as refused:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE clients SET id = :n WHERE id = :i"), {"n": uuid.uuid4(), "i": rid}
            )
    assert "must re-encrypt every ciphertext" in str(refused.value)
    async with engine.begin() as conn:  # the reverse restores the stale guard
        for statement in schema_sql.uncontract_ddl(SPEC):
            await conn.execute(text(statement))
    async with engine.connect() as conn:
        assert (
            await inspector.trigger_enabled(conn, "clients", schema_sql.KEY_GUARD_TRIGGER) is None
        )
        assert await inspector.schema_expanded(conn, SPEC)


async def put_in(engine: AsyncEngine, phase: Phase) -> None:
    async with engine.begin() as conn:  # test setup: the state row as a finished move leaves it
        await conn.execute(
            text(
                "UPDATE dualwrite_migrations SET phase = :p, version = version + 1 WHERE name = :n"
            ),
            {"p": phase.value, "n": SPEC.name},
        )


async def alter_trigger(engine: AsyncEngine, how: str) -> None:
    """What an operator (or a tool) runs by hand: ``DISABLE``, ``ENABLE`` (origin only),
    ``ENABLE ALWAYS``."""
    async with engine.begin() as conn:
        await conn.execute(
            text(f"ALTER TABLE clients {how} TRIGGER {schema_sql.STALE_GUARD_TRIGGER}")
        )


@pytest.mark.parametrize(
    ("how", "state"),
    [
        ("DISABLE", "disabled"),
        (
            "ENABLE",
            "enabled for origin sessions only (writers with session_replication_role = replica "
            "bypass it)",
        ),
    ],
)
@pytest.mark.parametrize(
    "phase", [Phase.DUAL_WRITE, Phase.BACKFILL, Phase.READ_SWITCH, Phase.CONTRACT]
)
async def test_every_forward_move_rechecks_the_guard_trigger(
    engine: AsyncEngine, settings: Settings, phase: Phase, how: str, state: str
) -> None:
    """A trigger disabled (or re-enabled for origin sessions only) mid-migration stops the next
    forward move, with a reason naming the trigger and the fix."""
    await put_in(engine, phase)
    await alter_trigger(engine, how)
    target = next_phase(phase)
    assert target is not None
    _, decision = await decide(engine, SPEC.name, target, settings=settings, keyring_current="v1")
    reasons = {g.name: g.reason for g in decision.failures}
    assert reasons.get("guard_trigger_enabled") == (
        f"trigger {schema_sql.STALE_GUARD_TRIGGER} on clients is {state}: run `ALTER TABLE "
        f"clients ENABLE ALWAYS TRIGGER {schema_sql.STALE_GUARD_TRIGGER}`"
    )
    await alter_trigger(engine, "ENABLE ALWAYS")
    _, decision = await decide(engine, SPEC.name, target, settings=settings, keyring_current="v1")
    assert "guard_trigger_enabled" not in {g.name for g in decision.failures}


async def test_a_disabled_trigger_refuses_the_move_out_of_dual_write(
    engine: AsyncEngine, settings: Settings
) -> None:
    """``dual_write -> backfill`` has no data guard of its own: before the re-check a disabled
    trigger went unnoticed and the move was applied."""
    await put_in(engine, Phase.DUAL_WRITE)
    await alter_trigger(engine, "DISABLE")
    with pytest.raises(GuardsFailedError) as refused:
        await change_phase(
            engine, SPEC.name, "backfill", actor="test", reason=None, force=False,
            settings=settings, keyring_current="v1",
        )  # fmt: skip
    assert [f.name for f in refused.value.failures] == ["guard_trigger_enabled"]
    assert "is disabled" in str(refused.value) and "\n" not in str(refused.value)
    await alter_trigger(engine, "ENABLE ALWAYS")
    moved = await change_phase(
        engine, SPEC.name, "backfill", actor="test", reason=None, force=False,
        settings=settings, keyring_current="v1",
    )  # fmt: skip
    assert moved.phase is Phase.BACKFILL


async def test_after_a_real_finalize_raw_key_changes_are_still_refused(
    engine: AsyncEngine, settings: Settings
) -> None:
    """``dualwrite finalize`` (the contract revision's online plan, not the offline DDL) leaves
    the key guard in place, enabled ALWAYS: no plaintext is left to rebuild from, so a key change
    that keeps a ciphertext bound to the old key is refused, replica-role writers included."""
    rid = await encrypted_row(engine)
    await purged_in_contract(engine, 20)
    done = await change_phase(
        engine, SPEC.name, "finalized", actor="test", reason="purged", force=False,
        settings=settings, keyring_current="v1",
    )  # fmt: skip
    assert done.phase is Phase.FINALIZED
    async with engine.connect() as conn:
        assert not await inspector.plaintext_columns_present(conn, SPEC)
        assert await inspector.trigger_enabled(conn, "clients", schema_sql.KEY_GUARD_TRIGGER) == "A"
    for replica in (False, True):
        with pytest.raises(DBAPIError) as refused:
            async with engine.begin() as conn:
                if replica:
                    await conn.execute(text("SET LOCAL session_replication_role = replica"))
                await conn.execute(
                    text("UPDATE clients SET id = :n WHERE id = :i"), {"n": uuid.uuid4(), "i": rid}
                )
        assert "primary key change on clients must re-encrypt every ciphertext" in str(
            refused.value
        )
    assert await column(engine, rid, "email_encrypted") is not None  # the row kept its key
