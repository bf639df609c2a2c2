"""``dualwrite phase show|set``, ``finalize`` and ``status`` against real PostgreSQL (in-process
typer runner; the commands run their own event loop, so these tests are synchronous)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from click.testing import Result
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from dualwrite.cli import app
from dualwrite.db import make_engine
from dualwrite.phases import Phase
from dualwrite.state import audit_log, fleet, registry
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1

NAME = "clients_pii"
T = TypeVar("T")


@pytest.fixture
def cli(database_url: URL) -> Callable[..., Result]:
    env = {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "ENCRYPTION_KEYS": f"v1={TEST_KEY_V1}",
        "ENCRYPTION_CURRENT_KEY": "v1",
        "BLIND_INDEX_KEY": TEST_BIDX_KEY,
        "POLL_INTERVAL_SECONDS": "0.5",
        "SOAK_SECONDS": "0",
    }
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


def on_db(database_url: URL, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = make_engine(database_url, pool_size=1)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def db_state(database_url: URL) -> tuple[Phase, int, list[audit_log.AuditRecord]]:
    async def work(engine: AsyncEngine) -> tuple[Phase, int, list[audit_log.AuditRecord]]:
        async with engine.connect() as conn:
            s = await registry.get_migration(conn, NAME)
            return s.phase, s.version, await audit_log.list_audit(conn, NAME)

    return on_db(database_url, work)


def assert_one_error_line(result: Result, needle: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in result.output + result.stderr


def test_show_and_set(cli: Callable[..., Result], database_url: URL) -> None:
    r = cli("phase", "show", "--json")
    assert r.exit_code == 0, r.output
    [m] = json.loads(r.stdout)
    assert (m["name"], m["phase"], m["version"]) == (NAME, "plaintext", 1)
    r = cli("phase", "show")
    assert r.exit_code == 0 and "plaintext" in r.stdout

    r = cli("phase", "set", NAME, "dual_write", "--reason", "start", "--actor", "bob")
    assert r.exit_code == 0, r.output
    assert "now in dual_write (version 2)" in r.stdout
    phase, version, audit = db_state(database_url)
    assert (phase, version) == (Phase.DUAL_WRITE, 2)
    assert (audit[0].actor, audit[0].reason, audit[0].outcome) == ("bob", "start", "applied")


def test_refusals_exit_1_and_change_nothing(cli: Callable[..., Result], database_url: URL) -> None:
    assert cli("phase", "set", NAME, "dual_write").exit_code == 0

    async def lagging(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await fleet.heartbeat(
                conn, fleet.Heartbeat("api-old", NAME, Phase.PLAINTEXT, 1, frozenset({"v1"}))
            )

    on_db(database_url, lagging)
    before = db_state(database_url)

    r = cli("phase", "set", NAME, "backfill", "--reason", "try")
    assert r.exit_code == 1
    err = r.stderr
    assert "cannot move from dual_write to backfill: 1 guard(s) failed" in err
    assert "  - fleet_observed_dual_write: instance api-old has observed version 1" in err
    assert "Traceback" not in err

    assert_one_error_line(cli("phase", "set", NAME, "read_switch"), "cannot skip")
    assert_one_error_line(cli("phase", "set", NAME, "backfill", "--force"), "needs a reason")
    assert_one_error_line(cli("phase", "set", NAME, "sideways"), "unknown phase 'sideways'")
    assert_one_error_line(cli("phase", "set", "nope", "backfill"), "unknown migration 'nope'")
    assert_one_error_line(cli("phase", "show", "nope"), "unknown migration 'nope'")

    phase, version, audit = db_state(database_url)
    assert (phase, version) == before[:2]
    assert [a.outcome for a in audit][:1] == ["refused"]  # only the guard refusal is on record
    assert len(audit) == len(before[2]) + 1

    r = cli("phase", "set", NAME, "backfill", "--force", "--reason", "old box is gone")
    assert r.exit_code == 0, r.output
    _, _, audit = db_state(database_url)
    assert audit[0].forced is True


def test_status_and_finalize(cli: Callable[..., Result], database_url: URL) -> None:
    r = cli("status", NAME, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["coverage"]["percent"] == 100.0
    assert report["moves"]["forward"]["target"] == "dual_write"
    r = cli("status")
    assert r.exit_code == 0, r.output
    assert "plaintext (version 1, since" in r.stdout and "next moves" in r.stdout

    assert_one_error_line(cli("finalize", NAME, "--reason", "too early"), "cannot skip")

    async def to_contract(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE dualwrite_migrations SET phase = 'contract'"))

    on_db(database_url, to_contract)
    r = cli("finalize", NAME, "--reason", "purged and verified")
    assert r.exit_code == 0, r.output
    assert "now in finalized" in r.stdout
    phase, _, audit = db_state(database_url)
    assert phase is Phase.FINALIZED and audit[0].action == "finalize"
    r = cli("status", NAME, "--json")
    assert json.loads(r.stdout)["coverage"]["plaintext_columns_present"] is False
