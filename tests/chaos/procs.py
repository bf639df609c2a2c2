"""``dualwrite`` commands as real processes, handed out by a pool of warm spares.

Importing the CLI with everything its commands load (SQLAlchemy, Alembic, uvicorn, the app, the
backfiller) takes seconds of CPU. A chaos run kills and restarts processes many times, so each
process is started *before* it is needed: a spare runs ``python -c`` that imports those modules
and then waits for one JSON line on its stdin, ``{"argv": [...], "env": {...}}``; it updates its
environment and runs the console-script entry point ``dualwrite.cli.main()`` with that argv. From
then on it is an ordinary ``dualwrite`` process (its own pid, sockets, database sessions); SIGKILL
ends it like any other. The pool starts a new spare in the background whenever one is taken.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

WARM = """
import json, os, sys
import dualwrite.cli, dualwrite.cli.backfill, dualwrite.cli.serve  # noqa
import uvicorn, clients_service.app, dualwrite.backfill  # noqa
line = sys.stdin.readline()
if not line:
    raise SystemExit(0)
order = json.loads(line)
os.environ.update(order["env"])
sys.argv = ["dualwrite", *order["argv"]]
dualwrite.cli.main()
"""


@dataclass
class Proc:
    """One ``dualwrite`` process (a taken spare)."""

    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    async def wait(self, timeout: float) -> int:
        return await asyncio.to_thread(self.popen.wait, timeout)

    def output(self, tail: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""


class WarmPool:
    """Spares for ``dualwrite`` commands; :meth:`take` hands one out and starts the next."""

    def __init__(self, env: dict[str, str], folder: Path, size: int = 2) -> None:
        self.env, self.folder, self.size = dict(env), folder, size
        self._spares: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._count = 0
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        self._count += 1
        log = self.folder / f"proc-{self._count}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-c", WARM], env=self.env, stdin=subprocess.PIPE,
                stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd(),
            )  # fmt: skip
        self._spares.append((popen, log))

    def take(self, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """A process running ``dualwrite <argv>`` with ``env`` added to the pool's environment."""
        popen, log = self._spares.pop(0)
        self._spawn()
        assert popen.stdin is not None
        popen.stdin.write((json.dumps({"argv": argv, "env": env or {}}) + "\n").encode())
        popen.stdin.flush()
        popen.stdin.close()
        return Proc(popen, log, argv)

    def close(self) -> None:
        for popen, _ in self._spares:
            if popen.poll() is None:
                popen.kill()
            popen.wait()
        self._spares.clear()
