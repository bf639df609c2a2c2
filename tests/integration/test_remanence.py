"""Plaintext remanence on real PostgreSQL: planted plaintext is found in the table's files
after a finalize that skipped the rewrite, and gone after the rewrite (VACUUM FULL within an
offline budget on the embedded PostgreSQL 18; pg_repack on the Debian PostgreSQL 15, with lz4
TOAST compression); a role that may not read pages gets ``not_scanned``, never a 0."""

from __future__ import annotations

import base64
import os
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from dualwrite.config import Settings
from dualwrite.control.purge import rewrite_and_scan
from dualwrite.control.transitions import change_phase
from dualwrite.crypto import FieldCipher, load_keyring
from dualwrite.db import make_engine
from dualwrite.errors import DualwriteError
from dualwrite.remanence import RewriteOptions, repack_status, scan
from dualwrite.schema import sql as schema_sql
from dualwrite.testing import DatabaseFactory, debian_bindir, debian_postgres
from tests.conftest import make_settings

ROWS = 40
WORDS = [
    "session",
    "anxiety",
    "sleep",
    "therapy",
    "family",
    "work",
    "grief",
    "panic",
    "mood",
    "plan",
    "review",
    "notes",
]


def planted(i: int, rng: random.Random) -> dict[str, str]:
    """Short fields (inline), a compressible history (even rows: ~40 kB, compressed and moved
    to TOAST; odd rows: ~6 kB of repeats, compressed inline) and an incompressible 3 kB
    address (TOAST, stored raw)."""
    tag = uuid.uuid4().hex
    if i % 2 == 0:
        history = " ".join(rng.choice(WORDS) for _ in range(6000)) + f" case {tag}"
    else:
        history = f"Follow-up {tag}: stable. " * 150
    return {
        "first_name": f"Plantedfirst{i}",
        "last_name": f"Plantedlast{i}",
        "email": f"planted.{i}.{tag[:8]}@example.org",
        "phone": f"+1 555 {i:04d} {tag[:6]}",
        "address": base64.b64encode(os.urandom(2400)).decode(),
        "medical_history": history,
    }


async def plant_and_purge(engine: AsyncEngine, cipher: FieldCipher) -> None:
    """Rows with plaintext and ciphertext, then the purge (plaintext NULL, ciphertext kept)
    and phase contract: what finalize starts from."""
    rng = random.Random(7)
    async with engine.begin() as conn:
        for i in range(ROWS):
            rid = uuid.uuid4()
            values = planted(i, rng)
            cts = {
                f"{k}_encrypted": cipher.encrypt(v, table="clients", column=k, row_key=str(rid))
                for k, v in values.items()
            }
            cols = ", ".join([*values, *cts])
            params = ", ".join(f":{c}" for c in [*values, *cts])
            await conn.execute(
                text(f"INSERT INTO clients (id, workspace_id, {cols}) VALUES (:id, :ws, {params})"),
                {"id": rid, "ws": uuid.uuid4(), **values, **cts},
            )
    nulls = ", ".join(f"{f} = NULL" for f in CLIENTS_PII.field_names)
    async with engine.begin() as conn:
        await conn.execute(text(schema_sql.keep_ciphertext_sql()))
        await conn.execute(text(f"UPDATE clients SET {nulls}"))
        await conn.execute(text("UPDATE dualwrite_migrations SET phase = 'contract'"))


async def finalize_without_rewrite(engine: AsyncEngine, settings: Settings) -> None:
    state = await change_phase(
        engine, "clients_pii", "finalized", actor="test", reason="purged", force=False,
        settings=settings, keyring_current="v1",
    )  # fmt: skip
    assert state.phase.value == "finalized"


async def remanence_scenario(
    engine: AsyncEngine, settings: Settings, options: RewriteOptions
) -> dict[str, object]:
    cipher = FieldCipher(load_keyring(settings))
    await plant_and_purge(engine, cipher)
    await finalize_without_rewrite(engine, settings)

    skipped = await rewrite_and_scan(
        engine, "clients_pii", settings, cipher, RewriteOptions("none")
    )
    assert skipped.rewrite.status == "skipped" and skipped.scan is None
    before = await scan(engine, CLIENTS_PII, cipher, sample=ROWS)
    print(before.render())
    assert before.residual_plaintext and before.residual_plaintext > ROWS  # most values found
    assert {"heap", "toast", "toast compressed", "heap compressed"} <= set(before.found_in)

    done = await rewrite_and_scan(engine, "clients_pii", settings, cipher, options)
    print(done.rewrite.render())
    assert done.rewrite.status == "done", done.rewrite.reason
    assert done.scan is not None
    print(done.scan.render())
    assert done.scan.residual_plaintext == 0 and done.scan.passed
    assert done.scan.values_searched >= 4 * ROWS and done.scan.bytes_scanned > 0
    return {"before": before, "after": done}


async def test_plaintext_found_without_rewrite_and_gone_after_vacuum_full_in_budget(
    engine: AsyncEngine, settings: Settings
) -> None:
    result = await remanence_scenario(engine, settings, RewriteOptions("vacuum-full", 30))
    after = result["after"]
    assert after.rewrite.method == "vacuum-full"  # type: ignore[attr-defined]
    assert after.rewrite.lock_seconds is not None  # type: ignore[attr-defined]


async def test_vacuum_full_refused_when_its_estimate_exceeds_the_budget(
    engine: AsyncEngine, settings: Settings
) -> None:
    cipher = FieldCipher(load_keyring(settings))
    await plant_and_purge(engine, cipher)
    await finalize_without_rewrite(engine, settings)
    tiny = make_settings(engine.url, rewrite_estimate_mb_per_second=0.001)
    with pytest.raises(DualwriteError, match=r"over the budget of 0\.5 s"):
        await rewrite_and_scan(
            engine, "clients_pii", tiny, cipher, RewriteOptions("vacuum-full", 0.5)
        )
    auto = await rewrite_and_scan(engine, "clients_pii", tiny, cipher, RewriteOptions("auto", 0.5))
    assert auto.rewrite.status == "pending" and "over the budget" in auto.rewrite.reason
    assert "dualwrite rewrite clients_pii" in auto.rewrite.how


async def test_a_role_without_page_access_gets_not_scanned_not_zero(
    engine: AsyncEngine, settings: Settings, database_url: URL
) -> None:
    cipher = FieldCipher(load_keyring(settings))
    await plant_and_purge(engine, cipher)
    role = f"scan_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        await conn.execute(text(f"GRANT SELECT ON clients TO {role}"))
    limited = make_engine(database_url.set(username=role), pool_size=1)
    try:
        report = await scan(limited, CLIENTS_PII, cipher, sample=ROWS)
    finally:
        await limited.dispose()
        async with engine.begin() as conn:
            await conn.execute(text(f"REVOKE ALL ON clients FROM {role}"))
            await conn.execute(text(f"DROP ROLE {role}"))
    assert report.residual_plaintext is None and not report.passed
    assert report.values_searched > 0  # it could decrypt, it could not look
    reasons = " ".join(n.reason for n in report.not_scanned)
    assert "pageinspect needs a superuser" in reasons and "pg_read_binary_file" in reasons
    assert {n.what.split()[0] for n in report.not_scanned} >= {"heap", "toast"}


@pytest.fixture
async def pg15_repack() -> AsyncIterator[tuple[URL, AsyncEngine]]:
    """A database of the Debian PostgreSQL 15 with the pg_repack extension (CI installs
    ``postgresql-15-repack``; elsewhere the test is skipped when it is missing)."""
    bindir = debian_bindir(15)
    if bindir is None or not (bindir / "pg_repack").exists():
        reason = "needs the Debian packages postgresql-15 and postgresql-15-repack"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run installs them)")
        pytest.skip(reason)
    with debian_postgres(15) as server:
        factory = DatabaseFactory(server_url=server)
        url = await factory.create("0003")
        engine = make_engine(url, pool_size=3)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE EXTENSION pg_repack"))
            await conn.execute(
                text("ALTER TABLE clients ALTER COLUMN medical_history SET COMPRESSION lz4")
            )
        try:
            yield url, engine
        finally:
            await engine.dispose()


async def test_on_postgresql_15_pg_repack_removes_the_plaintext_lz4_included(
    pg15_repack: tuple[URL, AsyncEngine],
) -> None:
    url, engine = pg15_repack
    settings = make_settings(url)
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        client, why = await repack_status(raw.driver_connection, settings)  # type: ignore[arg-type]
    assert client is not None, why
    result = await remanence_scenario(engine, settings, RewriteOptions("auto"))
    after = result["after"]
    assert after.rewrite.method == "repack"  # type: ignore[attr-defined]
    before = result["before"]
    assert before.compressed_values_expanded > 0  # type: ignore[attr-defined]


async def test_scan_and_rewrite_commands_exit_codes_and_json(
    engine: AsyncEngine, settings: Settings, database_url: URL
) -> None:
    import asyncio
    import json

    from tests.harness.processes import environment, start_cli

    cipher = FieldCipher(load_keyring(settings))
    await plant_and_purge(engine, cipher)
    await finalize_without_rewrite(engine, settings)
    env = environment(database_url)

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await start_cli(env, *args)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return int(proc.returncode or 0), out.decode(), err.decode()

    code, out, err = await cli("scan", "clients_pii", "--json")
    assert code == 1 and json.loads(out)["residual_plaintext"] > 0
    assert "plaintext found" in err and "Traceback" not in err
    code, _, err = await cli("rewrite", "clients_pii", "--method", "vacuum-full")
    assert code == 1 and "--offline-rewrite-budget" in err and len(err.strip().splitlines()) == 1
    code, out, _ = await cli("rewrite", "clients_pii")  # auto: no pg_repack, no budget
    assert code == 1 and "PENDING" in out and "--offline-rewrite-budget SECONDS" in out
    code, out, err = await cli(
        "rewrite", "clients_pii", "--method", "vacuum-full", "--offline-rewrite-budget", "30"
    )
    assert code == 0, err[-2000:]
    assert "done with vacuum-full" in out and "result: PASS" in out
    code, out, _ = await cli("scan", "clients_pii", "--json", "--sample", "1000")
    report = json.loads(out)
    assert code == 0 and report["residual_plaintext"] == 0 and report["passed"] is True
    assert "server logs" in report["outside_reach"]


async def test_a_snapshot_older_than_the_purge_keeps_the_rewrite_pending_and_named(
    engine: AsyncEngine, settings: Settings
) -> None:
    """A rewrite copies tuples an old snapshot may still see: it waits, then reports
    pending, naming the session."""
    from tests.harness.locks import OpenTransaction

    cipher = FieldCipher(load_keyring(settings))
    await plant_and_purge(engine, cipher)
    await finalize_without_rewrite(engine, settings)
    impatient = make_settings(engine.url, rewrite_wait_seconds=1.0)
    async with OpenTransaction(engine, "dualwrite_migrations", "repeatable read") as old:
        assert old.conn is not None
        pid = old.conn.get_server_pid()
        report = await rewrite_and_scan(
            engine, "clients_pii", impatient, cipher, RewriteOptions("vacuum-full", 30)
        )
    assert report.rewrite.status == "pending" and report.scan is None
    assert f"sessions older than the purge: pid {pid}" in report.rewrite.reason


async def test_scan_of_typed_values_in_a_schema_qualified_table_uses_the_frozen_name(
    engine: AsyncEngine, settings: Settings
) -> None:
    """clinic.patients, registered under another associated-data name (a table renamed after
    registration): the scan decrypts each typed value to its canonical text with the frozen
    ``aad_table``, searches text and jsonb strings, and counts binary-stored values."""
    import dataclasses
    import datetime as dt
    import json
    from decimal import Decimal

    from tests.integration.clinic_support import PATIENTS_PII, create_clinic_schema

    await create_clinic_schema(engine)
    moved = dataclasses.replace(PATIENTS_PII, aad_table="clinic.people")
    cipher = FieldCipher(load_keyring(settings))
    async with engine.begin() as conn:
        for i in range(ROWS):
            values = {
                "full_name": f"Planted Patient {i}", "email": f"planted.{i}@clinic.example",
                "date_of_birth": dt.date(1970, 1, 1) + dt.timedelta(days=i),
                "intake": {"allergy_notes": f"penicillin-severe-{i:04d}"},
                "balance": Decimal(f"{i}.50"),
                "last_visit": dt.datetime(2024, 5, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i),
            }  # fmt: skip
            pk = (await conn.execute(text(
                "INSERT INTO clinic.patients (clinic_id, full_name, email, date_of_birth, intake, "
                "balance, last_visit) VALUES (1, :full_name, :email, :date_of_birth, "
                "CAST(:intake AS jsonb), :balance, :last_visit) RETURNING id"),
                {**values, "intake": json.dumps(values["intake"])},
            )).scalar_one()  # fmt: skip
            sets = {
                f.ciphertext_column: cipher.encrypt(
                    f.value_type.encode(values[f.name]), table=moved.aad_table, column=f.name,
                    row_key=str(pk),
                )
                for f in moved.fields
            }  # fmt: skip
            assignments = ", ".join(f"{c} = :{c}" for c in sets)
            await conn.execute(
                text(f"UPDATE clinic.patients SET {assignments} WHERE id = :pk"),
                {**sets, "pk": pk},
            )
        await conn.execute(text(schema_sql.keep_ciphertext_sql()))
        nulls = ", ".join(f'"{f}" = NULL' for f in moved.field_names)
        await conn.execute(text(f"UPDATE clinic.patients SET {nulls}"))  # old versions remain

    found = await scan(engine, moved, cipher, sample=ROWS)
    print(found.render())
    assert found.rows_sampled == ROWS and found.values_binary == 3 * ROWS  # date, numeric, ts
    assert found.values_searched == 3 * ROWS  # full_name, email, the intake's strings
    assert found.residual_plaintext and found.residual_plaintext >= 2 * ROWS
    unbound = await scan(engine, PATIENTS_PII, cipher, sample=ROWS)  # the live table's name
    assert unbound.values_searched == 0  # nothing decrypts: the ciphertexts are bound elsewhere
