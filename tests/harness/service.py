"""The reference API served the way operators run it: ``dualwrite serve`` as its own process on
a free loopback port, stopped with SIGTERM (SIGKILL if it does not stop)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.harness.processes import start_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def served(
    env: dict[str, str], *args: str, log_file: Path | None = None, ready_seconds: float = 60.0
) -> AsyncIterator[str]:
    """``dualwrite serve`` with ``env`` on a free port; yields its base URL once ``/healthz``
    answers 200. Its stderr (the logs) goes to ``log_file`` when given."""
    port = free_port()
    proc = await start_cli(env, "serve", "--port", str(port), *args)
    url = f"http://127.0.0.1:{port}"
    drain = asyncio.create_task(_drain(proc.stderr, log_file))
    out = asyncio.create_task(_drain(proc.stdout, None))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:
            deadline = asyncio.get_running_loop().time() + ready_seconds
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"dualwrite serve exited with {proc.returncode}")
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("dualwrite serve did not become ready")
                await asyncio.sleep(0.2)
        yield url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.gather(drain, out, return_exceptions=True)


async def _drain(stream: asyncio.StreamReader | None, into: Path | None) -> None:
    if stream is None:
        return
    sink = into.open("ab") if into is not None else None
    try:
        while chunk := await stream.read(65536):
            if sink is not None:
                sink.write(chunk)
                sink.flush()
    finally:
        if sink is not None:
            sink.close()
