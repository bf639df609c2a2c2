"""Backfill progress: done / remaining / rate / ETA, as a progress bar or as JSON lines.

On a terminal a rich progress bar; otherwise one JSON object per line (at most one per
``every`` seconds, plus the last one), e.g.::

    {"event": "progress", "migration": "clients_pii", "mode": "encrypt", "shard": 0,
     "done": 12000, "failed": 0, "remaining": 188000, "rows_per_s": 24510.3, "eta_s": 7.7}

Never a value from a row: failures are reported by primary key only (``failed_pks``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol, TextIO


@dataclass(frozen=True, slots=True)
class Progress:
    migration: str
    mode: str
    shard: int
    done: int
    failed: int
    remaining: int
    rows_per_s: float
    state: str = "running"  # running | paused | throttled | finished | watching | stopped
    reason: str | None = None  # why it is throttled (the latency budget, the database health)

    @property
    def eta_s(self) -> float | None:
        if self.remaining <= 0:
            return 0.0
        return round(self.remaining / self.rows_per_s, 1) if self.rows_per_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": "progress", "migration": self.migration, "mode": self.mode,
            "shard": self.shard, "state": self.state, "done": self.done, "failed": self.failed,
            "remaining": self.remaining, "rows_per_s": round(self.rows_per_s, 1),
            "eta_s": self.eta_s, **({"reason": self.reason} if self.reason else {}),
        }  # fmt: skip


class ProgressSink(Protocol):
    def update(self, progress: Progress, *, force: bool = False) -> None: ...

    def event(self, name: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class JsonLinesProgress:
    """One JSON object per line on ``stream`` (stdout by default)."""

    def __init__(self, stream: TextIO | None = None, every: float = 1.0) -> None:
        self.stream = stream or sys.stdout
        self.every = every
        self._last = 0.0

    def update(self, progress: Progress, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            self._write(progress.as_dict())

    def event(self, name: str, **fields: Any) -> None:
        self._write({"event": name, **fields})

    def _write(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, default=str) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class RichProgress:
    """A progress bar for a terminal (rich), with rate and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.console = Console(stderr=True)
        self.bar = Bar(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9} rows/s"), TextColumn("{task.fields[state]}"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )  # fmt: skip
        self.task: Any = None

    def update(self, progress: Progress, *, force: bool = False) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(
                f"{progress.migration} {progress.mode}", total=None, rate="", state=""
            )
        total = progress.done + progress.failed + progress.remaining
        self.bar.update(
            self.task, completed=progress.done + progress.failed, total=total,
            rate=f"{progress.rows_per_s:,.0f}",
            state=f"{progress.state}: {progress.reason}" if progress.reason else progress.state,
        )  # fmt: skip

    def event(self, name: str, **fields: Any) -> None:
        shown = " ".join(f"{k}={v}" for k, v in fields.items())
        self.console.print(f"{name}: {shown}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()


class NullProgress:
    def update(self, progress: Progress, *, force: bool = False) -> None:
        pass

    def event(self, name: str, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


def default_sink(stream: TextIO | None = None) -> ProgressSink:
    """A bar when ``stream`` (stdout) is a terminal, JSON lines otherwise."""
    stream = stream or sys.stdout
    return RichProgress() if stream.isatty() else JsonLinesProgress(stream)


class RateMeter:
    """Rows per second over a sliding window of recent batches.

    >>> m = RateMeter(window=10.0)
    >>> m.add(1000, now=0.0); m.add(1000, now=0.5); m.rate(now=1.0)
    2000.0
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._events: list[tuple[float, int]] = []
        self._start: float | None = None

    def add(self, rows: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._start is None:
            self._start = now
        self._events.append((now, rows))
        cut = now - self.window
        while self._events and self._events[0][0] < cut:
            self._events.pop(0)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if not self._events or self._start is None:
            return 0.0
        begin = max(self._start, now - self.window)
        span = max(now - begin, 1e-6)
        return sum(n for t, n in self._events if t >= begin) / span
