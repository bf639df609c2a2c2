"""The backfiller against a real PostgreSQL: modes, refusals, workers, knobs, faults."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from dualwrite.backfill import Backfiller, BackfillOptions
from dualwrite.config import Settings
from dualwrite.crypto import BlindIndex, load_keyring
from dualwrite.errors import MissingKeyError, ModeNotAllowedError, UnknownMigrationError
from dualwrite.metrics import Metrics
from dualwrite.phases import BackfillMode, Phase
from dualwrite.schema import inspector
from dualwrite.state import checkpoints, registry
from dualwrite.verify import verify
from tests.conftest import TEST_KEY_V1, TEST_KEY_V2, make_settings
from tests.integration.backfill_helpers import (
    backfill,
    cipher_of,
    move_to,
    plaintexts,
    scalar,
    table_snapshot,
)

ROWS = 600


@pytest.fixture
async def seeded(engine: AsyncEngine) -> AsyncEngine:
    await seed_clients(engine, ROWS, workspaces=3)
    return engine


def _rotated(settings: Settings) -> Settings:
    """The same settings with key v2 added and made current (v1 still readable)."""
    return settings.model_copy(
        update={"encryption_keys": SecretStr(f"v1={TEST_KEY_V1},v2={TEST_KEY_V2}"),
                "encryption_current_key": "v2"}
    )  # fmt: skip


async def _coverage(engine: AsyncEngine) -> inspector.Coverage:
    async with engine.connect() as conn:
        return await inspector.coverage(conn, CLIENTS_PII)


async def test_encrypt_covers_every_row_and_records_finish(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    metrics = Metrics()
    report = await backfill(seeded, settings, "encrypt", metrics=metrics, batch_size=70)
    assert report.stopped == "finished"
    assert report.rows_done == ROWS and report.rows_failed == 0 and report.remaining == 0
    assert (await _coverage(seeded)).rows_missing_ciphertext == 0
    assert (
        metrics.value(
            "dualwrite_backfill_rows_total", migration="clients_pii", mode="encrypt", outcome="done"
        )
        == ROWS
    )
    async with seeded.connect() as conn:
        assert await checkpoints.last_backfill_finished_at(conn, "clients_pii") is not None
        cp = await checkpoints.get_checkpoint(conn, "clients_pii", "encrypt")
    assert cp is not None and cp.rows_done == ROWS and cp.finished_at is not None
    result = await verify(
        seeded, CLIENTS_PII, cipher_of(settings), BlindIndex.from_settings(settings)
    )
    assert result.ok and result.checked == ROWS
    # idempotent: a second run finds nothing and changes nothing
    before = await table_snapshot(seeded)
    again = await backfill(seeded, settings, "encrypt")
    assert again.rows_done == 0 and again.stopped == "finished"
    assert await table_snapshot(seeded) == before


async def test_never_overwrites_a_ciphertext_the_app_wrote(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    sentinel = cipher_of(settings).encrypt("Zed", table="clients", column="first_name", row_key="x")
    async with seeded.begin() as conn:
        await conn.execute(
            text(
                "UPDATE clients SET first_name_encrypted = :c "
                "WHERE id = (SELECT id FROM clients ORDER BY id LIMIT 1)"
            ),
            {"c": sentinel},
        )
    await backfill(seeded, settings, "encrypt")
    kept = await scalar(seeded, "SELECT first_name_encrypted FROM clients ORDER BY id LIMIT 1")
    assert kept == sentinel


@pytest.mark.parametrize(
    ("phase_path", "mode"),
    [
        ((), "encrypt"),
        ((Phase.DUAL_WRITE,), "encrypt"),
        ((Phase.DUAL_WRITE, Phase.BACKFILL), "purge"),
        ((Phase.DUAL_WRITE, Phase.BACKFILL), "decrypt"),
    ],
)
async def test_wrong_phase_refuses_before_touching_data(
    seeded: AsyncEngine, settings: Settings, phase_path: tuple[Phase, ...], mode: str
) -> None:
    await move_to(seeded, *phase_path)
    before = await table_snapshot(seeded)
    with pytest.raises(ModeNotAllowedError, match="not allowed in phase"):
        await backfill(seeded, settings, mode)
    assert await table_snapshot(seeded) == before
    assert await scalar(seeded, "SELECT count(*) FROM dualwrite_checkpoints") == 0


async def test_missing_keys_and_unknown_migration_refuse(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    before = await table_snapshot(seeded)
    options = BackfillOptions(mode=BackfillMode.ENCRYPT)
    no_bidx = Backfiller(seeded, "clients_pii", cipher_of(settings), None, options)
    with pytest.raises(MissingKeyError, match="BLIND_INDEX_KEY"):
        await no_bidx.run()
    with pytest.raises(MissingKeyError):
        load_keyring(make_settings(encryption_keys=None))
    unknown = Backfiller(seeded, "nope", cipher_of(settings), None, options)
    with pytest.raises(UnknownMigrationError):
        await unknown.run()
    assert await table_snapshot(seeded) == before


async def test_two_workers_at_once_process_each_row_once(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    reports = await asyncio.gather(
        backfill(seeded, settings, "encrypt", batch_size=25, shard=0),
        backfill(seeded, settings, "encrypt", batch_size=25, shard=1),
    )
    assert sum(r.rows_done for r in reports) == ROWS
    assert all(r.rows_done > 0 for r in reports)  # the work was really shared
    assert (await _coverage(seeded)).rows_missing_ciphertext == 0
    total = await scalar(seeded, "SELECT sum(rows_done) FROM dualwrite_checkpoints")
    assert total == ROWS


async def test_rotation_rekeys_while_traffic_continues(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(seeded, settings, "encrypt")
    rotated = _rotated(settings)
    reader = cipher_of(rotated)
    original = await plaintexts(seeded)
    stop = asyncio.Event()
    reads = 0

    async def read_during_rekey() -> None:
        nonlocal reads
        while not stop.is_set():
            async with seeded.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT id, email, email_encrypted FROM clients ORDER BY random() LIMIT 20"
                    )
                )
                for pk, email, ct in rows:
                    value = reader.decrypt(ct, table="clients", column="email", row_key=str(pk))
                    assert value == email  # v1 and v2 both readable meanwhile
                    reads += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(read_during_rekey())
    report = await backfill(seeded, rotated, "rekey", batch_size=40, sleep_ratio=0.5)
    stop.set()
    await task
    assert report.rows_done == ROWS and reads > 0
    left = await scalar(
        seeded,
        "SELECT count(*) FROM clients WHERE substring(first_name_encrypted from 1 for 3) <> 'v2:'",
    )
    assert left == 0
    result = await verify(seeded, CLIENTS_PII, reader, BlindIndex.from_settings(rotated))
    assert result.ok and set(result.versions) == {"v2"}
    assert await plaintexts(seeded) == original


async def test_purge_then_decrypt_restores_every_plaintext(
    seeded: AsyncEngine, settings: Settings
) -> None:
    original = await plaintexts(seeded)
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(seeded, settings, "encrypt")
    await move_to(seeded, Phase.READ_SWITCH, Phase.CONTRACT)
    purged = await backfill(seeded, settings, "purge")
    assert purged.rows_done == ROWS
    assert (await _coverage(seeded)).rows_with_plaintext == 0
    assert (await _coverage(seeded)).rows_missing_ciphertext == 0  # ciphertext kept
    await move_to(seeded, Phase.READ_SWITCH)  # decrypt runs once the fleet writes plaintext
    restored = await backfill(seeded, settings, "decrypt")
    assert restored.rows_done == ROWS
    assert await plaintexts(seeded) == original


async def test_purge_encrypts_first_and_keeps_a_mismatched_plaintext(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL, Phase.READ_SWITCH, Phase.CONTRACT)
    cipher = cipher_of(settings)
    async with seeded.begin() as conn:
        pk = (await conn.execute(text("SELECT id FROM clients ORDER BY id LIMIT 1"))).scalar()
        wrong = cipher.encrypt("someone else", table="clients", column="last_name", row_key=str(pk))
        await conn.execute(
            text("UPDATE clients SET last_name_encrypted = :c WHERE id = :id"),
            {"c": wrong, "id": pk},
        )
    report = await backfill(seeded, settings, "purge")
    assert report.rows_failed == 1 and report.failed_pks == [str(pk)]
    assert report.rows_done == ROWS - 1  # the others were encrypted, then purged
    kept = await scalar(seeded, "SELECT last_name FROM clients WHERE id = :id", id=pk)
    assert kept is not None  # never NULLed: its ciphertext does not decrypt to it


@pytest.mark.parametrize("mode", ["decrypt", "rekey"])
async def test_undecryptable_row_is_counted_reported_by_pk_and_skipped(
    seeded: AsyncEngine, settings: Settings, mode: str
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(seeded, settings, "encrypt")
    await move_to(seeded, Phase.READ_SWITCH, Phase.CONTRACT)
    if mode == "decrypt":
        await backfill(seeded, settings, "purge")
        await move_to(seeded, Phase.READ_SWITCH)
    async with seeded.begin() as conn:
        pk = (
            await conn.execute(text("SELECT id FROM clients ORDER BY id LIMIT 1 OFFSET 7"))
        ).scalar()
        await conn.execute(  # tamper: flip the last byte of the tag
            text("UPDATE clients SET email_encrypted = overlay(email_encrypted placing "
                 "'\\x00'::bytea from length(email_encrypted)) WHERE id = :id"), {"id": pk},
        )  # fmt: skip
    run_settings = settings
    if mode == "rekey":
        run_settings = _rotated(settings)
    report = await backfill(seeded, run_settings, mode)
    assert report.rows_failed == 1 and report.failed_pks == [str(pk)]
    assert report.rows_done == ROWS - 1 and report.stopped == "finished"
    assert "@" not in " ".join(report.failed_pks)  # primary keys only, never values


async def test_knobs_apply_while_running_pause_and_resume(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    async with seeded.begin() as conn:
        await registry.update_backfill_control(conn, "clients_pii", {"paused": True})
    metrics = Metrics()
    task = asyncio.create_task(backfill(seeded, settings, "encrypt", metrics=metrics))
    await asyncio.sleep(0.8)
    assert (await _coverage(seeded)).rows_missing_ciphertext == ROWS  # paused: nothing yet
    assert (
        metrics.value("dualwrite_backfill_throttled", migration="clients_pii", reason="paused") == 1
    )
    async with seeded.begin() as conn:
        await registry.update_backfill_control(
            conn, "clients_pii", {"paused": False, "batch_size": 300}
        )
    report = await asyncio.wait_for(task, timeout=30)
    assert report.rows_done == ROWS and report.batches == 2  # the new batch size applied


async def test_rate_limit_and_health_pause(seeded: AsyncEngine, settings: Settings) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await backfill(seeded, settings, "encrypt", batch_size=100, max_rows_per_second=1500)
    assert report.rows_done == ROWS
    assert loop.time() - started >= (ROWS - 200) / 1500  # held back by the limit
    # an impossible health limit (more than 0 other active backends is never reached here, so
    # use a tiny lag limit on a primary without standbys: no lag -> no pause) completes
    await move_to(seeded, Phase.READ_SWITCH)
    report = await backfill(seeded, settings, "rekey", max_replication_lag_seconds=0.1)
    assert report.stopped == "finished"


async def test_phase_change_mid_run_stops_cleanly(seeded: AsyncEngine, settings: Settings) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    task = asyncio.create_task(backfill(seeded, settings, "encrypt", batch_size=10, sleep_ratio=4))
    # move once batches are committed (not after a fixed sleep: a loaded machine may not have
    # started yet, a fast one may have finished)
    while not await scalar(
        seeded, "SELECT count(*) FROM dualwrite_checkpoints WHERE rows_done > 0"
    ):  # fmt: skip
        assert not task.done(), "the backfill ended before the phase change"
        await asyncio.sleep(0.02)
    await move_to(seeded, Phase.DUAL_WRITE)  # backward: encrypt no longer allowed
    report = await asyncio.wait_for(task, timeout=20)
    assert report.stopped == "phase_changed"
    assert 0 < report.rows_done < ROWS


async def test_terminated_connections_are_retried_and_resumed(
    seeded: AsyncEngine, settings: Settings
) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    task = asyncio.create_task(
        backfill(seeded, settings, "encrypt", batch_size=20, max_rows_per_second=500)
    )
    for _ in range(2):
        await asyncio.sleep(0.3)
        async with seeded.connect() as conn:
            await conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                " AND query NOT ILIKE '%pg_stat_activity%'"
            ))  # fmt: skip
    report = await asyncio.wait_for(task, timeout=60)
    assert report.retries >= 1 and report.stopped == "finished"
    assert (await _coverage(seeded)).rows_missing_ciphertext == 0
    result = await verify(
        seeded, CLIENTS_PII, cipher_of(settings), BlindIndex.from_settings(settings)
    )
    assert result.ok


async def test_dry_run_changes_nothing(seeded: AsyncEngine, settings: Settings) -> None:
    await move_to(seeded, Phase.DUAL_WRITE, Phase.BACKFILL)
    before = await table_snapshot(seeded)
    report = await backfill(seeded, settings, "encrypt", dry_run=True)
    assert report.stopped == "dry_run" and report.remaining == ROWS
    assert await table_snapshot(seeded) == before
