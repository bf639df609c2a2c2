"""The verifier against a real PostgreSQL: findings per kind, report without PII, repair, CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.seed import seed_clients
from dualwrite.config import Settings
from dualwrite.crypto import BlindIndex
from dualwrite.errors import PhaseError
from dualwrite.phases import Phase
from dualwrite.state import results
from dualwrite.verify import verify
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1
from tests.integration.backfill_helpers import backfill, cipher_of, move_to, plaintexts

ROWS = 300


@pytest.fixture
async def encrypted(engine: AsyncEngine, settings: Settings) -> AsyncEngine:
    await seed_clients(engine, ROWS, workspaces=2)
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(engine, settings, "encrypt")
    return engine


async def _ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [str(r[0]) for r in await conn.execute(text("SELECT id FROM clients ORDER BY id"))]


async def _damage(engine: AsyncEngine, settings: Settings) -> tuple[str, str, str]:
    """One row with a missing, one with a mismatched, one with an undecryptable ciphertext."""
    a, b, c = (await _ids(engine))[:3]
    wrong = cipher_of(settings).encrypt("not it", table="clients", column="address", row_key=b)
    async with engine.begin() as conn:
        await conn.execute(text("SELECT set_config('dualwrite.keep_ciphertext', 'on', true)"))
        await conn.execute(
            text("UPDATE clients SET phone_encrypted = NULL WHERE id = :i"), {"i": a}
        )
        await conn.execute(
            text("UPDATE clients SET address_encrypted = :c WHERE id = :i"), {"c": wrong, "i": b}
        )
        await conn.execute(  # a ciphertext copied from another row fails its associated data
            text("UPDATE clients SET email_encrypted = (SELECT email_encrypted FROM clients "
                 "WHERE id = :a) WHERE id = :i"), {"a": a, "i": c},
        )  # fmt: skip
    return a, b, c


async def test_clean_table_passes_and_is_recorded(
    encrypted: AsyncEngine, settings: Settings
) -> None:
    report = await verify(
        encrypted, CLIENTS_PII, cipher_of(settings), BlindIndex.from_settings(settings)
    )
    assert report.ok and report.checked == ROWS and report.binary
    assert dict(report.versions) == {"v1": report.versions["v1"]} and report.versions["v1"] > ROWS
    async with encrypted.connect() as conn:
        rec = await results.latest_verification(conn, "clients_pii")
    assert rec is not None and rec.full and rec.mismatches == 0 and rec.missing == 0


async def test_finds_each_kind_reports_keys_only_and_repairs(
    encrypted: AsyncEngine, settings: Settings
) -> None:
    a, b, c = await _damage(encrypted, settings)
    cipher, bidx = cipher_of(settings), BlindIndex.from_settings(settings)
    report = await verify(encrypted, CLIENTS_PII, cipher, bidx)
    assert (report.missing, report.mismatched, report.undecryptable) == (1, 1, 1)
    assert report.per_field["phone"].missing == 1
    assert report.per_field["address"].mismatched == 1
    assert report.per_field["email"].undecryptable == 1
    assert set(report.problem_keys) == {a, b, c}
    rendered = report.render() + str(report.as_dict())
    for values in (await plaintexts(encrypted)).values():
        for value in values:
            assert value is None or str(value) not in rendered  # never a value
    async with encrypted.connect() as conn:
        rec = await results.latest_verification(conn, "clients_pii")
    assert rec is not None and rec.mismatches == 1 and rec.undecryptable == 1
    repaired = await verify(encrypted, CLIENTS_PII, cipher, bidx, repair=True)
    assert repaired.repaired == 3 and repaired.repair_conflicts == 0
    again = await verify(encrypted, CLIENTS_PII, cipher, bidx)
    assert again.ok


async def test_sample_and_repair_follows_the_side_the_phase_reads(
    encrypted: AsyncEngine, settings: Settings
) -> None:
    cipher = cipher_of(settings)
    sample = await verify(encrypted, CLIENTS_PII, cipher, sample=50)
    assert not sample.full and 0 < sample.checked <= 50 and sample.ok
    assert sample.repair_direction is None
    await move_to(encrypted, Phase.READ_SWITCH, Phase.CONTRACT)
    report = await verify(encrypted, CLIENTS_PII, cipher, repair=True)
    assert report.ok and report.repair_direction == "plaintext from ciphertext"
    async with encrypted.begin() as conn:  # the columns gone: nothing left to rebuild
        await conn.execute(text("ALTER TABLE clients DROP COLUMN address"))
    with pytest.raises(PhaseError, match=r"^--repair rebuilds the plaintext, but the plaintext "):
        await verify(encrypted, CLIENTS_PII, cipher, repair=True)


async def test_cli_exit_codes_and_json(
    encrypted: AsyncEngine, settings: Settings, database_url: URL
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "ENCRYPTION_KEYS": f"v1={TEST_KEY_V1}",
        "BLIND_INDEX_KEY": TEST_BIDX_KEY,
    }
    cmd = [sys.executable, "-m", "dualwrite.cli"]
    ok = subprocess.run(
        [*cmd, "verify", "--full", "--json"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert '"ok": true' in ok.stdout
    await _damage(encrypted, settings)
    bad = subprocess.run([*cmd, "verify", "--full"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "result: 3 problems" in bad.stdout
    refused = subprocess.run(
        [*cmd, "backfill", "--mode", "purge", "--once"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 1
    logs_dropped = [line for line in refused.stderr.splitlines() if not line.startswith("{")]
    assert logs_dropped == [
        "error: backfill mode 'purge' is not allowed in phase 'backfill' (allowed: encrypt, rekey)"
    ]
