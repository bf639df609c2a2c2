"""``dualwrite revision`` in real ``alembic init`` and ``alembic init -t async`` projects: the
generated revisions applied by ``dualwrite db upgrade`` (which stops before the contract), a
plain ``alembic upgrade head`` refusing at the contract in one line, the contract and its
reverse through ``dualwrite finalize`` and ``phase set`` (the online-DDL runner on the
schema-qualified table with a unique field), and bad input refused in one line with nothing
written."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.db import make_engine
from dualwrite.schema import sql as schema_sql
from dualwrite.state import registry
from dualwrite.testing import DatabaseFactory
from tests.harness.processes import environment
from tests.integration.clinic_support import PATIENTS_PII, create_clinic_schema

FIELDS = [
    "--field", "full_name:search=text", "--field", "email:search=email:unique",
    "--field", "date_of_birth:search", "--field", "intake", "--field", "balance",
    "--field", "last_visit",
]  # fmt: skip


def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def dualwrite(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run(cwd, env, "-m", "dualwrite.cli", *args)


@pytest.fixture
async def clinic_db(db_factory: DatabaseFactory) -> AsyncIterator[URL]:
    url = await db_factory.create(None)
    engine = make_engine(url, pool_size=1)
    try:
        await create_clinic_schema(engine, expand=False)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE clinic.pairs (a int, b int, note text, "
                                    "weight double precision, PRIMARY KEY (a, b))"))  # fmt: skip
    finally:
        await engine.dispose()
    yield url
    await db_factory.drop(url)


def project(tmp: Path, template: str, url: URL, env: dict[str, str]) -> Path:
    args = ["-m", "alembic", "init", *(["-t", template] if template != "generic" else []),
            "migrations"]  # fmt: skip
    done = run(tmp, env, *args)
    assert done.returncode == 0, done.stderr
    driver = "postgresql+asyncpg" if template == "async" else "postgresql+psycopg"
    ini = tmp / "alembic.ini"
    rendered = url.set(drivername=driver).render_as_string(hide_password=False)
    lines = [
        f"sqlalchemy.url = {rendered.replace('%', '%%')}" if line.startswith("sqlalchemy.url")
        else line
        for line in ini.read_text().splitlines()
    ]  # fmt: skip
    ini.write_text("\n".join(lines) + "\n")
    return tmp


@pytest.mark.parametrize("template", ["generic", "async"])
async def test_generated_revisions_in_an_unmodified_alembic_project(
    clinic_db: URL, tmp_path: Path, template: str
) -> None:
    env = environment(clinic_db)
    env.pop("ALEMBIC_CONFIG", None)
    root = await asyncio.to_thread(project, tmp_path, template, clinic_db, env)
    versions = root / "migrations" / "versions"

    made = await asyncio.to_thread(
        dualwrite, root, env, "revision", "patients_pii", "--table", "clinic.patients",
        "--scope", "clinic_id", *FIELDS,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    written = sorted(p.name for p in versions.glob("*.py"))
    assert len(written) == 3
    assert sum("state_tables" in n for n in written) == 1
    contract = next(versions.glob("*_patients_pii_contract.py")).read_text()
    assert "dualwrite_contract = True" in contract and "uq_patients_clinic_email" in contract

    up = await asyncio.to_thread(dualwrite, root, env, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    engine = make_engine(clinic_db, pool_size=1)
    try:
        async with engine.connect() as conn:
            state = await registry.get_migration(conn, "patients_pii")
            assert state.spec == PATIENTS_PII  # the example app's spec, as generated
            head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert head is not None and head in next(versions.glob("*_expand.py")).name

        plain = await asyncio.to_thread(run, root, env, "-m", "alembic", "upgrade", "head")
        assert plain.returncode != 0
        failed = [line for line in plain.stdout.splitlines() if line.startswith("FAILED:")]
        assert len(failed) == 1 and "dualwrite finalize" in failed[0]  # Alembic's one line
        assert "Traceback" not in plain.stderr + plain.stdout
        async with engine.connect() as conn:  # nothing changed
            again = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            assert again == head
            kept = await conn.execute(text(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'clinic' "
                "AND table_name = 'patients' AND column_name = 'email'"))  # fmt: skip
            assert kept.scalar() == 1

        shown = await asyncio.to_thread(dualwrite, root, env, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        assert '"patients_pii"' in shown.stdout

        await finalize_and_back(root, env, engine)
    finally:
        await engine.dispose()


CATALOG = {
    "columns": "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
    "attrelid = 'clinic.patients'::regclass AND attnum > 0 AND NOT attisdropped",
    "indexes": "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON "
    "c.oid = i.indexrelid WHERE i.indrelid = 'clinic.patients'::regclass",
    "constraints": "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = "
    "'clinic.patients'::regclass AND contype IN ('u', 'c')",
    "triggers": "SELECT tgname, tgenabled::text FROM pg_trigger WHERE tgrelid = "
    "'clinic.patients'::regclass AND NOT tgisinternal",
}
"""What the contract and its reverse change on clinic.patients, read from the catalog."""


async def catalog(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        return {k: dict((await conn.execute(text(q))).all()) for k, q in CATALOG.items()}


async def finalize_and_back(root: Path, env: dict[str, str], engine: AsyncEngine) -> None:
    """The generated contract through ``dualwrite finalize`` on the schema-qualified table with
    a unique field: the fence refuses a late plaintext write (nothing dropped), then the
    contract drops the plaintext (the UNIQUE ``_uidx`` index stays), and ``phase set contract``
    runs its reverse (each column with its registered type, the constraint and index back)."""
    before = await catalog(engine)
    assert before["indexes"]["ux_patients_email_uidx"] is True  # built concurrently, valid
    assert before["triggers"] == {"dualwrite_stale_guard": "A"}
    async with engine.begin() as conn:  # three purged rows, in contract
        await conn.execute(text(
            "INSERT INTO clinic.patients (clinic_id, full_name, email) VALUES (1, 'a', 'a@x.io'), "
            "(1, 'b', 'b@x.io'), (2, 'a', 'a@x.io')"))  # fmt: skip
        await conn.execute(text(schema_sql.keep_ciphertext_sql()))
        nulls = ", ".join(f'"{f}" = NULL' for f in PATIENTS_PII.field_names)
        await conn.execute(text(f"UPDATE clinic.patients SET {nulls}"))
        await conn.execute(text("UPDATE dualwrite_migrations SET phase = 'contract'"))
        await conn.execute(text("UPDATE clinic.patients SET email = 'late@x.io' WHERE id = 1"))
    args = ("finalize", "patients_pii", "--force", "--reason", "drill", "--rewrite", "none")
    refused = await asyncio.to_thread(dualwrite, root, env, *args)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "1 rows of clinic.patients still hold plaintext" in refused.stderr
    assert await catalog(engine) == before  # the fence was removed, nothing else changed

    async with engine.begin() as conn:
        await conn.execute(text(schema_sql.keep_ciphertext_sql()))
        await conn.execute(text("UPDATE clinic.patients SET email = NULL WHERE id = 1"))
    done = await asyncio.to_thread(dualwrite, root, env, *args)
    assert done.returncode == 0, done.stderr
    after = await catalog(engine)
    assert not set(PATIENTS_PII.field_names) & set(after["columns"])
    assert after["indexes"] == {"patients_pkey": True, "ux_patients_email_uidx": True,
                                "ix_patients_email_bidx": True, "ix_patients_full_name_bidx": True,
                                "ix_patients_date_of_birth_bidx": True}  # fmt: skip
    assert after["constraints"] == {} and after["triggers"] == {"dualwrite_key_guard": "A"}

    back = ("phase", "set", "patients_pii", "contract", "--force", "--reason", "drill")
    undone = await asyncio.to_thread(dualwrite, root, env, *back)
    assert undone.returncode == 0, undone.stderr
    fenced = {**before["constraints"], "dualwrite_patients_purged": False}  # NOT VALID
    # the same types, constraint, index and guard; fenced until contract -> read_switch
    assert await catalog(engine) == {**before, "constraints": fenced}


BAD = [
    (["revision", "patients-pii", "--table", "clinic.patients", "--field", "email"],
     "not a lower-case SQL identifier"),
    (["revision", "p_pii", "--table", "clinic.pairs", "--field", "note"], "composite primary key"),
    (["revision", "p_pii", "--table", "clinic.patients", "--field", "nickname"],
     "has no column nickname"),
    (["revision", "p_pii", "--table", "clinic.pairs2", "--field", "note"], "does not exist"),
    (["revision", "p_pii", "--table", "clinic.patients", "--field", "full_name",
      "--field", "email:search=email"], "declare it --field email:unique"),
    (["revision", "p_pii", "--table", "clinic.patients", "--field", "email:serch"],
     "unknown option"),
]  # fmt: skip


async def test_bad_input_is_one_line_and_writes_nothing(clinic_db: URL, tmp_path: Path) -> None:
    env = environment(clinic_db)
    root = await asyncio.to_thread(project, tmp_path, "async", clinic_db, env)
    versions = root / "migrations" / "versions"
    engine = make_engine(clinic_db, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE clinic.metrics (id bigint PRIMARY KEY, "
                                    "weight double precision)"))  # fmt: skip
    finally:
        await engine.dispose()
    cases = [*BAD, (["revision", "m_pii", "--table", "clinic.metrics", "--field", "weight"],
                    "floating-point")]  # fmt: skip
    for args, fragment in cases:
        done = await asyncio.to_thread(dualwrite, root, env, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, (args, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines
        assert list(versions.iterdir()) == [], args
