"""dualwrite commands run as separate processes, the way operators and workers run them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sqlalchemy import URL

from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1


def environment(database_url: URL, **extra: str) -> dict[str, str]:
    """The environment of a dualwrite process on ``database_url`` with the test keys."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url.render_as_string(hide_password=False),
        ENCRYPTION_KEYS=f"v1={TEST_KEY_V1}",
        ENCRYPTION_CURRENT_KEY="v1",
        BLIND_INDEX_KEY=TEST_BIDX_KEY,
        POLL_INTERVAL_SECONDS="0.2",
    )
    env.pop("ENCRYPTION_KEY", None)
    env.update(extra)
    return env


async def start_cli(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """``dualwrite <args>`` as a subprocess (stdout/stderr piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dualwrite.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL (no cleanup of any kind) and reap."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()
