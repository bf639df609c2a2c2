"""An instance's recent request latency: the p95 of the requests of the last few seconds.

The API's request edge adds every served request; the phase watcher puts :meth:`p95_ms` into
its heartbeat (``dualwrite_instances.recent_p95_ms``), which the backfiller's latency budget
reads (:mod:`dualwrite.backfill.latency`). The clock is injected (pure, testable):

>>> t = [100.0]
>>> w = RecentLatency(window_seconds=10, clock=lambda: t[0])
>>> w.p95_ms() is None
True
>>> for ms in range(1, 101):
...     w.add(ms / 1000)
>>> w.p95_ms()
95.0
>>> t[0] = 111.0  # all older than the window
>>> w.p95_ms() is None
True
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RecentLatency"]


class RecentLatency:
    """The last ``max_samples`` request durations younger than ``window_seconds``."""

    def __init__(
        self,
        window_seconds: float = 10.0,
        max_samples: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, seconds: float) -> None:
        """One served request that took ``seconds``."""
        self._samples.append((self._clock(), seconds))

    def p95_ms(self) -> float | None:
        """The nearest-rank p95 in milliseconds of the window, ``None`` without requests."""
        since = self._clock() - self.window_seconds
        recent = sorted(s for at, s in list(self._samples) if at >= since)
        if not recent:
            return None
        rank = max(0, -(-95 * len(recent) // 100) - 1)  # ceil(0.95 n) - 1
        return round(recent[rank] * 1000, 3)
