"""Helpers of the fleet liveness and fencing tests: real service processes, heartbeat rows,
phase moves with and without NOTIFY."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.phases import Phase
from dualwrite.state import registry
from tests.harness.processes import environment
from tests.harness.prometheus import free_port
from tests.harness.service import Process, dualwrite_process, wait_healthy

NAME = "clients_pii"


@asynccontextmanager
async def service(
    database_url: URL, folder: Path, name: str, **env: str
) -> AsyncIterator[tuple[str, Process]]:
    """``dualwrite serve`` as its own process (instance id ``name``); yields (base URL, process)
    once healthy. It is stopped with SIGTERM (its graceful shutdown) when the block ends."""
    port = free_port()
    environ = environment(database_url, INSTANCE_ID=name, **env)
    async with dualwrite_process(
        environ, folder, name, "serve", "--port", str(port), "--log-level", "warning"
    ) as process:
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, process)
        yield base, process


def freeze(process: Process) -> None:
    """SIGSTOP: the process keeps its sockets and state but runs nothing (cut off, not dead)."""
    process.proc.send_signal(signal.SIGSTOP)


def thaw(process: Process) -> None:
    process.proc.send_signal(signal.SIGCONT)


async def heartbeats(engine: AsyncEngine, instance: str | None = None) -> list[Any]:
    """Heartbeat rows (of ``instance``), with their age on the database clock."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT instance_id, migration, observed_phase, observed_version, key_versions, "
                "poll_interval_seconds, last_seen, extract(epoch FROM clock_timestamp() - "
                "last_seen) AS age FROM dualwrite_instances WHERE CAST(:i AS text) IS NULL OR "
                "instance_id = :i ORDER BY instance_id, migration"
            ),
            {"i": instance},
        )
        return list(rows)


async def move(engine: AsyncEngine, target: Phase, *, notify: bool = True) -> int:
    """CAS the clients migration to ``target`` (no guards), announced unless ``notify`` is off
    (a lost notification); returns the new version."""
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, NAME, for_update=True)
        new = await registry.compare_and_swap_phase(conn, NAME, state.version, target)
        if notify:
            await registry.notify_phase(conn, new)
    return new.version


async def version(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await registry.get_migration(conn, NAME)).version
