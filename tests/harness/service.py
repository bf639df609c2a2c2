"""The reference service and backfill workers as real ``dualwrite`` processes on loopback ports,
their output in files (a full pipe never blocks them), stopped with SIGTERM (SIGKILL after 15 s)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.harness.prometheus import eventually


@dataclass
class Process:
    """One ``dualwrite`` command running in the background."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """The pids of its worker processes (``serve --workers N``)."""
        try:
            return sorted(c.pid for c in psutil.Process(self.pid).children() if c.is_running())
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@asynccontextmanager
async def dualwrite_process(
    env: Mapping[str, str], folder: Path, name: str, *args: str
) -> AsyncIterator[Process]:
    """``python -m dualwrite.cli <args>`` until the block ends (then SIGTERM and reap)."""
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dualwrite.cli", *args],
            env=dict(env), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    process = Process(proc, log)
    try:
        yield process
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_healthy(base: str, process: Process, timeout: float = 60) -> None:
    """Until ``GET /healthz`` answers 200 (fails early with the output if the process died)."""

    async def probe() -> bool:
        assert process.proc.poll() is None, process.output()
        try:
            async with httpx.AsyncClient(base_url=base, timeout=2) as c:
                return (await c.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(probe, bool, timeout=timeout, what=f"{base}/healthz")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def served(
    env: Mapping[str, str], *args: str, log_file: Path | None = None, ready_seconds: float = 60.0
) -> AsyncIterator[str]:
    """``dualwrite serve`` with ``env`` on a free port; yields its base URL once ``/healthz``
    answers 200. Its output (the logs) goes to ``log_file`` (default: a temporary file)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dualwrite-serve-") as tmp:
        target = log_file or Path(tmp) / "serve.log"
        async with dualwrite_process(
            env, target.parent, target.stem, "serve", "--port", str(port), *args
        ) as process:
            base = f"http://127.0.0.1:{port}"
            await wait_healthy(base, process, timeout=ready_seconds)
            yield base
