"""Backfill admission against real heartbeats: a re-key to ``vN`` waits until every live instance
holds ``vN``; a decrypt waits until every live instance observes the current phase. Refusals are
one line naming the rule and the instances, before any row is touched (in-process and from the
CLI, in a process of its own)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.seed import seed_clients
from dualwrite.backfill import BackfillReport
from dualwrite.config import Settings
from dualwrite.errors import BackfillRefusedError
from dualwrite.phases import BEHAVIOURS, BackfillMode, Phase
from dualwrite.state import fleet, registry
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1, TEST_KEY_V2
from tests.integration import backfill_helpers
from tests.integration.backfill_helpers import move_to, plaintexts, scalar, table_snapshot
from tests.integration.test_cli_errors import assert_one_line_error, run_cli

NAME = "clients_pii"
ROWS = 60
INTERVAL = 30.0  # the instances' and the backfiller's poll interval: nobody dies mid-test

# the phase that restores plaintext while every instance writes it again (DESIGN §5)
DECRYPT_PHASE = min(
    (p for p, b in BEHAVIOURS.items() if BackfillMode.DECRYPT in b.backfill_modes),
    key=lambda p: p.index,
)


@pytest.fixture
async def encrypted(engine: AsyncEngine, settings: Settings) -> AsyncEngine:
    """ROWS clients, every one encrypted under v1, in ``backfill``."""
    await seed_clients(engine, ROWS, workspaces=2)
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    await backfill(engine, settings, "encrypt")
    return engine


async def backfill(engine: AsyncEngine, settings: Settings, mode: str) -> BackfillReport:
    return await backfill_helpers.backfill(engine, settings, mode, poll_seconds=INTERVAL)


def rotated(settings: Settings) -> Settings:
    """v2 added and current (v1 still readable): what the operator's backfill runs with."""
    keys = SecretStr(f"v1={TEST_KEY_V1},v2={TEST_KEY_V2}")
    return settings.model_copy(update={"encryption_keys": keys, "encryption_current_key": "v2"})


async def beat(
    engine: AsyncEngine, instance: str, keys: set[str], *, version: int | None = None
) -> None:
    """A heartbeat as a serving instance sends it (observed phase and version, keys held)."""
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, NAME)
        seen = state.version if version is None else version
        hb = fleet.Heartbeat(
            instance, NAME, state.phase, seen, frozenset(keys), host="h1", pid=41,
            poll_interval_seconds=INTERVAL,
        )  # fmt: skip
        await fleet.heartbeat(conn, hb)


async def versions_in_use(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT DISTINCT convert_from(substring(email_encrypted from 1 for 3), 'UTF8') "
                "FROM clients ORDER BY 1"
            )
        )
        return [str(r[0]) for r in rows]


async def test_rekey_waits_until_every_live_instance_holds_the_new_key(
    encrypted: AsyncEngine, settings: Settings
) -> None:
    await beat(encrypted, "api-old", {"v1"})
    await beat(encrypted, "api-new", {"v1", "v2"})
    before = await table_snapshot(encrypted)
    with pytest.raises(BackfillRefusedError) as refused:
        await backfill(encrypted, rotated(settings), "rekey")
    message = str(refused.value)
    assert message == (
        "backfill --mode rekey refused: fleet_holds_current_key: instance api-old (host h1, "
        "pid 41) holds v1, needs v2 (give every instance that key first, or stop those "
        "instances)"
    )
    assert [f.name for f in refused.value.failures] == ["fleet_holds_current_key"]
    assert await table_snapshot(encrypted) == before  # nothing touched, no run started
    assert await scalar(encrypted, "SELECT count(*) FROM dualwrite_checkpoints "
                        "WHERE mode = 'rekey'") == 0  # fmt: skip

    await beat(encrypted, "api-old", {"v1", "v2"})  # the key reached it
    report = await backfill(encrypted, rotated(settings), "rekey")
    assert report.rows_done == ROWS
    assert await versions_in_use(encrypted) == ["v2:"]


async def test_a_stopped_instance_does_not_block_a_rekey(
    encrypted: AsyncEngine, settings: Settings
) -> None:
    await beat(encrypted, "api-gone", {"v1"})
    async with encrypted.begin() as conn:  # long gone: far beyond any liveness window
        await conn.execute(
            text("UPDATE dualwrite_instances SET last_seen = clock_timestamp() - interval '1 day'")
        )
    report = await backfill(encrypted, rotated(settings), "rekey")
    assert report.rows_done == ROWS


async def test_an_encrypt_under_a_key_the_fleet_lacks_is_refused(
    engine: AsyncEngine, settings: Settings
) -> None:
    """An encrypt writes under the current key as a re-key does (DESIGN §4: any writer)."""
    await seed_clients(engine, ROWS, workspaces=2)
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    await beat(engine, "api-1", {"v1"})
    with pytest.raises(BackfillRefusedError, match=r"instance api-1 .* holds v1, needs v2"):
        await backfill(engine, rotated(settings), "encrypt")
    missing = await scalar(engine, "SELECT count(*) FROM clients WHERE email_encrypted IS NULL")
    assert missing == ROWS
    assert (await backfill(engine, settings, "encrypt")).rows_done == ROWS  # v1: the fleet has it


async def test_the_cli_refuses_a_rekey_in_one_line_and_exits_non_zero(
    encrypted: AsyncEngine, database_url: URL
) -> None:
    await beat(encrypted, "api-old", {"v1"})
    env = {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "ENCRYPTION_KEYS": f"v1={TEST_KEY_V1},v2={TEST_KEY_V2}",
        "ENCRYPTION_CURRENT_KEY": "v2",
        "BLIND_INDEX_KEY": TEST_BIDX_KEY,
        "POLL_INTERVAL_SECONDS": str(INTERVAL),
        "LOG_LEVEL": "WARNING",
    }
    proc = run_cli("backfill", "--mode", "rekey", "--once", "--json", env=env)
    assert_one_line_error(
        proc, "backfill --mode rekey refused", "fleet_holds_current_key",
        "instance api-old (host h1, pid 41) holds v1, needs v2",
    )  # fmt: skip
    assert proc.returncode == 1
    assert TEST_KEY_V2 not in proc.stderr + proc.stdout
    assert await versions_in_use(encrypted) == ["v1:"]


async def test_decrypt_waits_until_every_live_instance_observes_the_phase(
    encrypted: AsyncEngine, settings: Settings
) -> None:
    """Decrypt restores plaintext only once no instance still runs an older phase (one that
    may write NULL plaintext behind it)."""
    original = await plaintexts(encrypted)
    await move_to(encrypted, Phase.READ_SWITCH, Phase.CONTRACT)
    await backfill(encrypted, settings, "purge")
    if DECRYPT_PHASE is not Phase.CONTRACT:
        await move_to(encrypted, DECRYPT_PHASE)
    async with encrypted.connect() as conn:
        state = await registry.get_migration(conn, NAME)
    await beat(encrypted, "api-1", {"v1"})
    await beat(encrypted, "api-2", {"v1"}, version=state.version - 1)  # still the old phase
    purged = await plaintexts(encrypted)
    with pytest.raises(BackfillRefusedError) as refused:
        await backfill(encrypted, settings, "decrypt")
    assert str(refused.value).startswith(
        f"backfill --mode decrypt refused: fleet_observed_{DECRYPT_PHASE}: instance api-2 "
        f"(host h1, pid 41) has observed version {state.version - 1}"
    )
    assert "api-1" not in str(refused.value) and "\n" not in str(refused.value)
    assert await plaintexts(encrypted) == purged  # nothing restored yet

    await beat(encrypted, "api-2", {"v1"})  # it observed the current version
    report = await backfill(encrypted, settings, "decrypt")
    assert report.rows_done == ROWS
    assert await plaintexts(encrypted) == original


async def test_purge_has_no_fleet_rule(encrypted: AsyncEngine, settings: Settings) -> None:
    await move_to(encrypted, Phase.READ_SWITCH, Phase.CONTRACT)
    await beat(encrypted, "api-1", set(), version=0)  # holds no key, observed nothing current
    assert (await backfill(encrypted, settings, "purge")).rows_done == ROWS
