"""An instance's recent request latency: the p95 of the requests of the last 5 seconds,
overall and per route (short, so the latency budget sees a backfill's effect within a few
seconds of it).

The API's request edge adds every served request with its route (method and template, never
the raw path); the phase watcher puts :meth:`p95_ms` and :meth:`by_route` into its heartbeat
(``dualwrite_instances.recent_p95_ms`` and ``recent_latency``), which the backfiller's latency
budget reads (:mod:`dualwrite.backfill.latency`). Per route, because one overall figure mixes
cheap single reads with bulk reads: whichever the traffic leans to hides the other's slowdown.
A request's time in the app leaves out the wait before the event loop even reads it: while the
loop is busy (a bulk read decoding, a CPU the backfill shares), a request that arrives waits
for it, unseen by the app. :class:`LoopLag` measures that wait (how late a timer the loop should
have run fires) and the request edge adds its latest figure to each request's time, so the
budget sees the queueing a client sees, not only the time in the app. The clock is injected
(pure, testable):

>>> t = [100.0]
>>> w = RecentLatency(window_seconds=10, clock=lambda: t[0])
>>> w.p95_ms() is None
True
>>> for ms in range(1, 101):
...     w.add(ms / 1000, "GET /one")
>>> w.add(0.5, "GET /bulk")
>>> w.p95_ms()
96.0
>>> w.by_route()
{'GET /bulk': {'p95_ms': 500.0, 'n': 1}, 'GET /one': {'p95_ms': 95.0, 'n': 100}}
>>> t[0] = 111.0  # all older than the window
>>> w.p95_ms() is None, w.by_route()
(True, {})
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["ANY_ROUTE", "LoopLag", "RecentLatency", "nearest_rank_p95"]

ANY_ROUTE = "*"
"""The route of a request added without one."""


def nearest_rank_p95(values: Iterable[float]) -> float | None:
    """The nearest-rank 95th percentile (``None`` for no values).

    >>> nearest_rank_p95([3.0, 1.0, 2.0]), nearest_rank_p95([])
    (3.0, None)
    """
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]  # ceil(0.95 n) - 1


class RecentLatency:
    """The last ``max_samples`` request durations younger than ``window_seconds``."""

    def __init__(
        self,
        window_seconds: float = 5.0,
        max_samples: int = 8192,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._samples: deque[tuple[float, float, str]] = deque(maxlen=max_samples)

    def add(self, seconds: float, route: str = ANY_ROUTE) -> None:
        """One served request of ``route`` that took ``seconds``."""
        self._samples.append((self._clock(), seconds, route))

    def _recent(self) -> list[tuple[float, float, str]]:
        since = self._clock() - self.window_seconds
        return [s for s in list(self._samples) if s[0] >= since]

    def p95_ms(self) -> float | None:
        """The p95 in milliseconds of every request in the window, ``None`` without requests."""
        return self.summary()[0]

    def by_route(self) -> dict[str, dict[str, float | int]]:
        """Per route of the window: its p95 in milliseconds and how many requests it had."""
        return self.summary()[1]

    def summary(self) -> tuple[float | None, dict[str, dict[str, float | int]]]:
        """:meth:`p95_ms` and :meth:`by_route` from one read of the window (the heartbeat)."""
        recent = self._recent()
        p95 = nearest_rank_p95(s for _, s, _ in recent)
        per: dict[str, list[float]] = {}
        for _, seconds, route in recent:
            per.setdefault(route, []).append(seconds)
        routes: dict[str, dict[str, float | int]] = {
            route: {"p95_ms": round((nearest_rank_p95(v) or 0.0) * 1000, 3), "n": len(v)}
            for route, v in sorted(per.items())
        }
        return (None if p95 is None else round(p95 * 1000, 3)), routes


class LoopLag:
    """How late the running event loop runs a callback that is due: a probe sleeps
    ``interval`` seconds and :attr:`seconds` is how much later than that it woke, the wait a
    request arriving now has before the loop reads it (0 until :meth:`run` runs, so an app
    without the probe adds nothing). About 100 wake-ups a second, each a few microseconds.

    >>> async def blocked() -> float:
    ...     lag = LoopLag(interval=0.005)
    ...     probe = asyncio.create_task(lag.run())
    ...     await asyncio.sleep(0.02)
    ...     time.sleep(0.05)  # the loop is busy for 50 ms: the due probe waits
    ...     await asyncio.sleep(0.02)
    ...     probe.cancel()
    ...     return lag.worst
    >>> asyncio.run(blocked()) >= 0.04
    True
    """

    def __init__(self, interval: float = 0.01, clock: Callable[[], float] = time.perf_counter):
        self.interval = interval
        self.seconds = 0.0  # the latest probe's lateness
        self.worst = 0.0  # the largest since the probe started (for tests and diagnostics)
        self._clock = clock

    async def run(self) -> None:
        """Probe until cancelled."""
        clock, interval = self._clock, self.interval
        while True:
            before = clock()
            await asyncio.sleep(interval)
            self.seconds = late = max(0.0, clock() - before - interval)
            self.worst = max(self.worst, late)
