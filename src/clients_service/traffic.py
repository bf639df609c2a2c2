"""The demo's live traffic: creates and updates through the reference API, remembering the last
value written to each client (to count lost writes) and the write latency in each phase."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import httpx

__all__ = ["Traffic"]


class Traffic:
    """Continuous creates and updates through the API; remembers the last value of each client."""

    def __init__(self, client: httpx.AsyncClient, workspace: str) -> None:
        self.client, self.ws = client, workspace
        self.expected: dict[str, dict[str, Any]] = {}
        self.ok = self.failed = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self.phase = "plaintext"
        self.latencies: dict[str, list[float]] = {}

    def _took(self, started: float) -> None:
        self.latencies.setdefault(self.phase, []).append(time.perf_counter() - started)

    def p95_ms(self) -> dict[str, float]:
        """p95 of the write latencies seen in each phase (milliseconds)."""
        out = {}
        for phase, seen in self.latencies.items():
            ranked = sorted(seen)
            out[phase] = round(1000 * ranked[min(len(ranked) - 1, int(0.95 * len(ranked)))], 1)
        return out

    async def create(self) -> None:
        n = len(self.expected)
        body = {
            "first_name": random.choice(["Ana", "Chloé", "Dmitri", "Søren", "Ngozi"]),
            "last_name": random.choice(["Müller", "Dubois", "Tanaka", "O'Brien"]),
            "email": f"demo{n}.{uuid.uuid4().hex[:6]}@example.org",
            "phone": f"+1 555 {random.randint(100, 999)} {random.randint(1000, 9999)}",
            "address": f"{random.randint(1, 999)} Harbor St, Kingston",
            "medical_history": "Initial assessment: adjustment disorder. " * 4,
        }
        started = time.perf_counter()
        resp = await self.client.post(f"/workspaces/{self.ws}/clients", json=body)
        self._took(started)
        if resp.status_code == 201:
            self.ok += 1
            data = resp.json()
            self.expected[data["id"]] = {k: data.get(k) for k in body}
        else:
            self.failed += 1

    async def update(self) -> None:
        cid = random.choice(list(self.expected))
        lock = self._locks.setdefault(cid, asyncio.Lock())
        async with lock:  # one writer per client at a time: "last value written" is well defined
            patch = {
                "phone": f"+1 555 {random.randint(100, 999)} {random.randint(1000, 9999)}",
                "address": f"{random.randint(1, 999)} Mill St, Ashford",
            }
            started = time.perf_counter()
            resp = await self.client.patch(f"/workspaces/{self.ws}/clients/{cid}", json=patch)
            self._took(started)
            if resp.status_code == 200:
                self.ok += 1
                data = resp.json()
                self.expected[cid] = {k: data.get(k) for k in self.expected[cid]}
            else:
                self.failed += 1

    async def _writer(self) -> None:
        while not self._stop.is_set():
            try:
                if len(self.expected) < 20 or random.random() < 0.3:
                    await self.create()
                else:
                    await self.update()
            except httpx.HTTPError:
                self.failed += 1
            await asyncio.sleep(0.01)

    def start(self, writers: int = 2) -> None:
        self._tasks = [asyncio.create_task(self._writer()) for _ in range(writers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def lost_writes(self) -> tuple[int, int]:
        """Read every client back; count those whose fields differ from the last write."""
        lost = 0
        for cid, fields in self.expected.items():
            resp = await self.client.get(f"/workspaces/{self.ws}/clients/{cid}")
            got = resp.json() if resp.status_code == 200 else {}
            if any(got.get(k) != v for k, v in fields.items()):
                lost += 1
        return len(self.expected), lost
