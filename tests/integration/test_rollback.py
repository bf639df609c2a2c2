"""The rollback rule of DESIGN §5 on a real PostgreSQL: finalized -> contract -> read_switch,
decrypt with the ciphertext authoritative, the repair direction, and the verification a move back
to plaintext reads needs.

Writers that are still in ``contract`` or ``finalized`` are driven through the framework's own
write path with that phase's behaviour (``contract`` writes NULL plaintext, ``finalized`` never
touches the plaintext column), exactly what such an instance sends to the database.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from clients_service.tables import CLIENTS
from dualwrite.config import Settings
from dualwrite.control.transitions import change_phase, decide
from dualwrite.crypto import BlindIndex
from dualwrite.errors import GuardsFailedError
from dualwrite.metrics import Metrics
from dualwrite.phases import Phase, behaviour
from dualwrite.runtime import EncryptedTable, FieldCodec
from dualwrite.state import checkpoints, fleet, registry, results
from dualwrite.verify import verify
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1
from tests.integration.backfill_helpers import backfill, cipher_of, move_to, table_snapshot

ROWS = 40
NAME = "clients_pii"


@pytest.fixture
async def seeded(engine: AsyncEngine) -> AsyncEngine:
    await seed_clients(engine, ROWS, workspaces=2)
    return engine


def app_table(settings: Settings) -> EncryptedTable:
    """The framework's table access, as an API instance has it."""
    codec = FieldCodec(CLIENTS_PII, cipher_of(settings), BlindIndex.from_settings(settings))
    return EncryptedTable(CLIENTS, codec)


async def write_as(
    settings: Settings, engine: AsyncEngine, phase: Phase, pk: Any, **v: Any
) -> None:
    """Update row ``pk`` the way an instance that still observes ``phase`` writes it."""
    async with engine.begin() as conn:
        assert await app_table(settings).update(conn, behaviour(phase), pk, v) is not None


async def read_as(settings: Settings, engine: AsyncEngine, phase: Phase, pk: Any) -> dict[str, Any]:
    """Row ``pk`` as an instance in ``phase`` serves it."""
    t = app_table(settings)
    async with engine.connect() as conn:
        (row,) = await t.fetch(conn, behaviour(phase), t.key == pk)
    return row


async def stored(engine: AsyncEngine, pk: Any, column: str) -> Any:
    async with engine.connect() as conn:
        sql = text(f"SELECT {column} FROM clients WHERE id = :i")  # column: a test constant
        return (await conn.execute(sql, {"i": pk})).scalar()


async def decrypted(settings: Settings, engine: AsyncEngine, pk: Any, field: str) -> str | None:
    ct = await stored(engine, pk, f"{field}_encrypted")
    return cipher_of(settings).decrypt(ct, table="clients", column=field, row_key=str(pk))


async def ids(engine: AsyncEngine) -> list[uuid.UUID]:
    async with engine.connect() as conn:
        return [r[0] for r in await conn.execute(text("SELECT id FROM clients ORDER BY id"))]


async def move(engine: AsyncEngine, settings: Settings, target: str, reason: str = "drill") -> Any:
    return await change_phase(
        engine, NAME, target, actor="test", reason=reason, force=False, settings=settings,
        keyring_current="v1",
    )  # fmt: skip


async def encrypted_in_read_switch(engine: AsyncEngine, settings: Settings) -> None:
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(engine, settings, "encrypt")
    await move_to(engine, Phase.READ_SWITCH)


async def full_verify(engine: AsyncEngine, settings: Settings, **kw: Any) -> Any:
    bidx = BlindIndex.from_settings(settings)
    return await verify(engine, CLIENTS_PII, cipher_of(settings), bidx, full=True, **kw)


async def test_rollback_from_finalized_keeps_a_newer_ciphertext_only_write(
    seeded: AsyncEngine, settings: Settings
) -> None:
    """The issue's scenario: after finalized -> contract -> read_switch and decrypt, an instance
    still in finalized writes a new first name (ciphertext only, the plaintext keeps the old
    one); ``verify --full --repair`` in read_switch must not bring the old name back, and
    backfill then serves the new one."""
    engine = seeded
    await encrypted_in_read_switch(engine, settings)
    await move_to(engine, Phase.CONTRACT)
    await backfill(engine, settings, "purge")
    assert (await move(engine, settings, "finalized", reason="purged")).phase is Phase.FINALIZED
    assert (await move(engine, settings, "contract")).phase is Phase.CONTRACT  # downgrade
    # reads stay on ciphertext: read_switch needs the columns back, not complete plaintext
    assert (await move(engine, settings, "read_switch")).phase is Phase.READ_SWITCH
    first, second, third = (await ids(engine))[:3]
    old = await decrypted(settings, engine, second, "first_name")
    await write_as(settings, engine, Phase.CONTRACT, first, first_name="Nora")  # NULL plaintext
    restored = await backfill(engine, settings, "decrypt")
    assert restored.stopped == "finished" and restored.rows_done == ROWS
    assert await stored(engine, first, "first_name") == "Nora"
    assert await stored(engine, second, "first_name") == old
    # an instance still in finalized: ciphertext only, the restored plaintext is now stale
    await write_as(settings, engine, Phase.FINALIZED, second, first_name="Ottilie")
    assert await stored(engine, second, "first_name") == old != "Ottilie"
    # a legacy plaintext-only writer: the trigger clears that ciphertext (nothing to rebuild)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE clients SET address = 'Bree' WHERE id = :i"), {"i": third})

    report = await full_verify(engine, settings, repair=True)
    assert (report.mismatched, report.missing) == (1, 1)
    assert report.repair_direction == "plaintext from ciphertext"
    assert (report.repaired, report.repair_conflicts, report.repair_skipped) == (1, 0, 1)
    assert "repair:                  plaintext from ciphertext (phase read_switch reads the " \
        "ciphertext)" in report.render()  # fmt: skip
    assert await decrypted(settings, engine, second, "first_name") == "Ottilie"  # never rewritten
    assert await stored(engine, second, "first_name") == "Ottilie"
    assert await stored(engine, third, "address") == "Bree"  # the side users read: untouched

    await backfill(engine, settings, "encrypt")  # the cleared ciphertext, from the plaintext
    assert (await full_verify(engine, settings)).ok
    assert (await move(engine, settings, "backfill")).phase is Phase.BACKFILL
    assert (await read_as(settings, engine, Phase.BACKFILL, second))["first_name"] == "Ottilie"
    assert (await read_as(settings, engine, Phase.BACKFILL, first))["first_name"] == "Nora"


async def test_decrypt_makes_plaintext_agree_with_ciphertext_and_never_overwrites_a_write(
    seeded: AsyncEngine, settings: Settings
) -> None:
    engine = seeded
    await encrypted_in_read_switch(engine, settings)
    stale, nulled, busy, plain_only = (await ids(engine))[:4]
    await write_as(settings, engine, Phase.FINALIZED, stale, first_name="Nora")  # stale pt
    await write_as(settings, engine, Phase.CONTRACT, nulled, last_name="Olsen")  # NULL pt
    async with engine.begin() as conn:  # plaintext-only write: its ciphertext is cleared
        await conn.execute(
            text("UPDATE clients SET address = 'Bree' WHERE id = :i"), {"i": plain_only}
        )
    # a read_switch instance holds an uncommitted write of another row while decrypt runs
    writer = await engine.connect()
    try:
        await writer.begin()
        assert await app_table(settings).update(
            writer, behaviour(Phase.READ_SWITCH), busy, {"first_name": "Pia"}
        )
        report = await backfill(engine, settings, "decrypt")
        await writer.commit()
    finally:
        await writer.close()
    assert report.stopped == "finished" and report.rows_done == 2 and report.rows_failed == 0
    assert await stored(engine, stale, "first_name") == "Nora"
    assert await stored(engine, nulled, "last_name") == "Olsen"
    assert await decrypted(settings, engine, stale, "first_name") == "Nora"  # ciphertext kept
    assert await decrypted(settings, engine, nulled, "last_name") == "Olsen"
    assert await stored(engine, busy, "first_name") == "Pia"  # the newer write stands
    assert await decrypted(settings, engine, busy, "first_name") == "Pia"
    assert await stored(engine, plain_only, "address") == "Bree"  # no ciphertext: plaintext kept
    async with engine.connect() as conn:
        finished = await checkpoints.last_finished_at(conn, NAME, "decrypt")
        assert finished is not None
        assert await checkpoints.unfinished_runs(conn, NAME, "decrypt") == 0
    before = await table_snapshot(engine)
    again = await backfill(engine, settings, "decrypt")
    assert again.rows_done == 0 and again.stopped == "finished"
    assert await table_snapshot(engine) == before


async def test_back_to_backfill_needs_complete_plaintext_and_a_verification_after_decrypt(
    seeded: AsyncEngine, settings: Settings
) -> None:
    engine = seeded
    await encrypted_in_read_switch(engine, settings)
    await move_to(engine, Phase.CONTRACT)
    await backfill(engine, settings, "purge")
    assert (await move(engine, settings, "read_switch")).phase is Phase.READ_SWITCH
    assert (await full_verify(engine, settings)).ok  # NULL plaintext is not a mismatch
    with pytest.raises(GuardsFailedError) as refused:
        await move(engine, settings, "backfill")
    assert [f.name for f in refused.value.failures] == ["plaintext_complete"]
    assert "\n" not in str(refused.value)
    await backfill(engine, settings, "decrypt")
    # the verification above started before the decrypt pass: it does not count
    with pytest.raises(GuardsFailedError) as refused:
        await move(engine, settings, "backfill")
    assert [f.name for f in refused.value.failures] == ["plaintext_verified"]
    assert "not after the last decrypt pass finished" in str(refused.value)
    assert (await full_verify(engine, settings)).ok
    assert (await move(engine, settings, "backfill")).phase is Phase.BACKFILL


async def test_a_verification_that_started_during_the_backfill_does_not_count(
    seeded: AsyncEngine, settings: Settings
) -> None:
    engine = seeded
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(engine, settings, "encrypt")
    async with engine.begin() as conn:
        done = await checkpoints.last_backfill_finished_at(conn, NAME)
        assert done is not None
        # a clean full run that began a moment before the last batch and ended after it
        await results.record_verification(
            conn,
            results.VerificationRecord(
                NAME, Phase.BACKFILL, done - timedelta(milliseconds=1), True, ROWS, 0, 0, 0
            ),
        )

    async def verification_guard() -> Any:
        _, decision = await decide(engine, NAME, "read_switch", settings=settings,
                                   keyring_current="v1")  # fmt: skip
        return next(g for g in decision.guards if g.name == "verification_passed")

    guard = await verification_guard()
    assert not guard.passed and "not after the backfill finished" in guard.reason
    assert (await full_verify(engine, settings)).ok
    assert (await verification_guard()).passed


def cli_env(database_url: URL) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "ENCRYPTION_KEYS": f"v1={TEST_KEY_V1}",
        "BLIND_INDEX_KEY": TEST_BIDX_KEY,
        "POLL_INTERVAL_SECONDS": "60",  # liveness far longer than the test takes
    }


DECRYPT_CLI = [sys.executable, "-m", "dualwrite.cli", "backfill", "--mode", "decrypt", "--once"]


async def test_decrypt_waits_until_every_live_instance_observes_read_switch(
    seeded: AsyncEngine, settings: Settings, database_url: URL
) -> None:
    engine = seeded
    await encrypted_in_read_switch(engine, settings)
    await move_to(engine, Phase.CONTRACT)
    await backfill(engine, settings, "purge")
    contract_version = (await move(engine, settings, "read_switch")).version - 1

    async def beat(phase: Phase, version: int) -> None:
        async with engine.begin() as conn:
            await fleet.heartbeat(conn, fleet.Heartbeat(
                "api-9", NAME, phase, version, frozenset({"v1"}), host="h9", pid=9,
                poll_interval_seconds=60.0,
            ))  # fmt: skip

    await beat(Phase.CONTRACT, contract_version)  # still writes ciphertext only
    before = await table_snapshot(engine)
    refused = subprocess.run(DECRYPT_CLI, env=cli_env(database_url), capture_output=True, text=True)
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if not line.startswith("{")]
    assert lines == [
        "error: backfill --mode decrypt refused: fleet_observed_read_switch: instance api-9 "
        f"(host h9, pid 9) has observed version {contract_version} (contract), needs version "
        f"{contract_version + 1} (read_switch) (wait until every instance observes the current "
        "phase)"
    ]
    assert await table_snapshot(engine) == before
    await beat(Phase.READ_SWITCH, contract_version + 1)
    done = subprocess.run(DECRYPT_CLI, env=cli_env(database_url), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    async with engine.connect() as conn:
        state = await registry.get_migration(conn, NAME)
        assert await checkpoints.last_finished_at(conn, NAME, "decrypt") is not None
    assert state.phase is Phase.READ_SWITCH
    assert await stored(engine, (await ids(engine))[0], "first_name") is not None


@pytest.mark.parametrize(
    ("phase", "allowed"), [(Phase.CONTRACT, "rekey, purge"), (Phase.FINALIZED, "rekey")]
)
async def test_decrypt_is_refused_in_contract_and_finalized_in_one_line(
    seeded: AsyncEngine, settings: Settings, database_url: URL, phase: Phase, allowed: str
) -> None:
    await encrypted_in_read_switch(seeded, settings)
    await move_to(seeded, Phase.CONTRACT)
    await backfill(seeded, settings, "purge")
    if phase is Phase.FINALIZED:  # the columns are still there: only the phase refuses
        await move_to(seeded, Phase.FINALIZED)
    before = await table_snapshot(seeded)
    done = subprocess.run(DECRYPT_CLI, env=cli_env(database_url), capture_output=True, text=True)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert lines == [
        f"error: backfill mode 'decrypt' is not allowed in phase '{phase}' (allowed: {allowed}): "
        "decrypt runs in read_switch, once every instance writes plaintext again (move back to "
        "read_switch first)"
    ]
    assert "Traceback" not in done.stderr
    assert await table_snapshot(seeded) == before


async def test_repair_rebuilds_ciphertext_while_reads_come_from_plaintext(
    seeded: AsyncEngine, settings: Settings
) -> None:
    engine = seeded
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(engine, settings, "encrypt")
    pk = (await ids(engine))[0]
    # a ciphertext-only write while backfill reads plaintext: the plaintext is what users read
    await write_as(settings, engine, Phase.FINALIZED, pk, first_name="Nora")
    served = (await read_as(settings, engine, Phase.BACKFILL, pk))["first_name"]
    report = await full_verify(engine, settings, repair=True, metrics=Metrics())
    assert report.repair_direction == "ciphertext from plaintext" and report.repaired == 1
    assert await stored(engine, pk, "first_name") == served != "Nora"
    assert await decrypted(settings, engine, pk, "first_name") == served


async def test_repair_in_read_switch_never_overwrites_the_ciphertext_users_read(
    seeded: AsyncEngine, settings: Settings
) -> None:
    engine = seeded
    await encrypted_in_read_switch(engine, settings)
    pk = (await ids(engine))[0]
    # an instance still in a ciphertext-only phase writes a new first name: plaintext is stale
    await write_as(settings, engine, Phase.FINALIZED, pk, first_name="Nora")
    assert (await read_as(settings, engine, Phase.READ_SWITCH, pk))["first_name"] == "Nora"
    report = await full_verify(engine, settings, repair=True)
    assert report.mismatched == 1 and report.repaired == 1
    assert (await read_as(settings, engine, Phase.READ_SWITCH, pk))["first_name"] == "Nora"
    assert await decrypted(settings, engine, pk, "first_name") == "Nora"
    assert await stored(engine, pk, "first_name") == "Nora"  # rebuilt from the ciphertext
    assert report.as_dict()["repair_direction"] == "plaintext from ciphertext"
    assert (await full_verify(engine, settings)).ok
