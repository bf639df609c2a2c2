"""PhaseWatcher on real PostgreSQL: NOTIFY and polling propagation, heartbeats, read events,
monotonic versions, recovery from killed connections.

Deadlines are generous ("observed before the deadline"), never timing of the fast path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.db import make_engine
from dualwrite.errors import UnknownMigrationError
from dualwrite.metrics import Metrics
from dualwrite.phases import Phase
from dualwrite.runtime.watcher import PhaseWatcher
from dualwrite.state import fleet, read_events, registry
from tests.conftest import make_settings

NAME = "clients_pii"
T = TypeVar("T")


async def move(engine: AsyncEngine, target: Phase, *, notify: bool = True) -> int:
    """Change the phase the way a transition does (CAS + NOTIFY), return the new version."""
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, NAME, for_update=True)
        new = await registry.compare_and_swap_phase(conn, NAME, state.version, target)
        if notify:
            await registry.notify_phase(conn, new)
    return new.version


@asynccontextmanager
async def watcher(
    database_url: URL, **kwargs: object
) -> AsyncIterator[tuple[PhaseWatcher, AsyncEngine]]:
    """A started watcher on its own engine (as a separate app instance would have)."""
    poll = float(kwargs.pop("poll", 0.2))  # type: ignore[arg-type]
    eng = make_engine(database_url, pool_size=2)
    w = PhaseWatcher(
        eng,
        make_settings(database_url, poll_interval_seconds=poll),
        key_versions=frozenset({"v1"}),
        **kwargs,  # type: ignore[arg-type]
    )
    await w.start()
    try:
        yield w, eng
    finally:
        await w.stop()
        await eng.dispose()


async def test_notify_reaches_two_instances_without_polling(
    engine: AsyncEngine, database_url: URL
) -> None:
    # a 60 s poll interval: only NOTIFY can deliver the change before the deadline
    async with (
        watcher(database_url, poll=60, listen=True) as (a, _),
        watcher(database_url, poll=60, listen=True) as (b, _),
    ):
        assert a.state(NAME).phase is Phase.PLAINTEXT
        version = await move(engine, Phase.DUAL_WRITE)
        assert await a.wait_for_version(NAME, version, timeout=2.0)
        assert await b.wait_for_version(NAME, version, timeout=2.0)
        assert a.state(NAME).phase is b.state(NAME).phase is Phase.DUAL_WRITE
        assert b.behaviour(NAME).writes_ciphertext


async def test_polling_alone_catches_a_lost_notification(
    engine: AsyncEngine, database_url: URL
) -> None:
    poll = 0.3
    async with (
        watcher(database_url, poll=poll, listen=False) as (a, _),
        watcher(database_url, poll=poll, listen=False) as (b, _),
    ):
        version = await move(engine, Phase.DUAL_WRITE, notify=False)
        # one poll interval, plus slack for a loaded machine
        assert await a.wait_for_version(NAME, version, timeout=poll + 1.0)
        assert await b.wait_for_version(NAME, version, timeout=poll + 1.0)


async def test_heartbeat_records_what_was_observed_and_stop_removes_it(
    engine: AsyncEngine, database_url: URL
) -> None:
    async with watcher(database_url, instance_id="api-1") as (w, _):
        async with engine.connect() as conn:
            [inst] = await fleet.list_instances(conn, NAME)
        assert (inst.instance_id, inst.observed_phase, inst.observed_version) == (
            "api-1",
            Phase.PLAINTEXT,
            w.state(NAME).version,
        )
        assert inst.key_versions == frozenset({"v1"})
        version = await move(engine, Phase.DUAL_WRITE)
        assert await w.wait_for_version(NAME, version, timeout=3.0)

        async def heartbeat_version() -> int | None:
            async with engine.connect() as conn:
                return (await fleet.list_instances(conn, NAME))[0].observed_version

        await wait_until(heartbeat_version, lambda v: v == version, timeout=3.0)
    async with engine.connect() as conn:
        assert await fleet.list_instances(conn, NAME) == []


async def wait_until(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float
) -> None:
    """Poll ``probe`` until ``ok`` holds (TimeoutError after ``timeout`` seconds)."""
    async with asyncio.timeout(timeout):
        while not ok(await probe()):
            await asyncio.sleep(0.05)


async def test_read_events_are_flushed_under_the_observed_version(
    engine: AsyncEngine, database_url: URL
) -> None:
    async with watcher(database_url) as (w, _):
        version = w.state(NAME).version
        w.count_read_event(NAME, "read_fallback", 2)
        w.count_read_event(NAME, "shadow_mismatch")
        with pytest.raises(ValueError, match="unknown read event kind"):
            w.count_read_event(NAME, "gossip")
        with pytest.raises(UnknownMigrationError):
            w.count_read_event("nope", "read_fallback")

        async def totals() -> dict[str, int]:
            async with engine.connect() as conn:
                return await read_events.read_event_totals(conn, NAME, version)

        await wait_until(
            totals, lambda t: t == {"read_fallback": 2, "shadow_mismatch": 1}, timeout=3.0
        )


async def test_observed_version_never_goes_backwards_and_metrics_follow(
    engine: AsyncEngine, database_url: URL
) -> None:
    metrics = Metrics()
    async with watcher(database_url, metrics=metrics) as (w, _):
        version = await move(engine, Phase.DUAL_WRITE)
        assert await w.wait_for_version(NAME, version, timeout=3.0)
        assert metrics.value("dualwrite_phase", migration=NAME, phase="dual_write") == 1.0
        assert metrics.value("dualwrite_phase", migration=NAME, phase="plaintext") == 0.0
        assert metrics.value("dualwrite_phase_version", migration=NAME) == version
        async with engine.begin() as conn:  # a stale row (e.g. a restored backup) must not win
            await conn.execute(
                text("UPDATE dualwrite_migrations SET phase='plaintext', version=1 WHERE name=:n"),
                {"n": NAME},
            )
        await w.refresh()
        assert (w.state(NAME).phase, w.state(NAME).version) == (Phase.DUAL_WRITE, version)
        with pytest.raises(UnknownMigrationError):
            w.state("nope")
        assert set(w.states()) == {NAME}


async def test_survives_killed_connections(
    engine: AsyncEngine, database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dualwrite.runtime.watcher")
    async with watcher(database_url, poll=0.2, listen=True) as (w, _):
        async with engine.connect() as conn:  # kill every other backend: pooled + LISTEN
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND pid <> pg_backend_pid()"
                )
            )
        version = await move(engine, Phase.DUAL_WRITE, notify=False)
        assert await w.wait_for_version(NAME, version, timeout=5.0)
        version = await move(engine, Phase.BACKFILL)  # LISTEN was re-opened by the poll loop
        assert await w.wait_for_version(NAME, version, timeout=5.0)
    assert "Traceback" not in caplog.text


async def test_heartbeat_reports_the_recent_request_p95(
    engine: AsyncEngine, database_url: URL
) -> None:
    """``dualwrite_instances.recent_p95_ms`` carries the p95 of the requests this instance
    served lately, ``recent_latency`` the p95 per route (what the latency budget reads)."""
    metrics = Metrics()
    for ms in range(1, 101):
        metrics.recent_latency.add(ms / 1000, "GET /one")
    metrics.recent_latency.add(0.9, "GET /bulk")
    async with watcher(database_url, poll=0.1, listen=False, metrics=metrics) as (w, _):
        for _ in range(100):
            async with engine.connect() as conn:
                got = (
                    await conn.execute(
                        text(
                            "SELECT recent_p95_ms, recent_latency FROM dualwrite_instances "
                            "WHERE instance_id = :i"
                        ),
                        {"i": w.instance_id},
                    )
                ).one_or_none()
            if got is not None and got[0] is not None:
                break
            await asyncio.sleep(0.1)
    assert got is not None and got[0] == 96.0  # overall: 101 requests
    assert got[1] == {
        "GET /bulk": {"p95_ms": 900.0, "n": 1},
        "GET /one": {"p95_ms": 95.0, "n": 100},
    }
