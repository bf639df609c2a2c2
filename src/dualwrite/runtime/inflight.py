"""Requests in flight per state version: what a watcher may report as observed.

A request takes ONE phase snapshot when it starts (:meth:`InFlight.request`) and keeps it until
it ends, so a request that began under version 7 may still write under version 7 after the
watcher has loaded version 8. The fleet guards read "observed version 8" as "nothing of this
instance writes under 7 any more"; :meth:`InFlight.reportable` therefore reports the oldest
version that still has a request in flight, and the current version only once every request of
an older one has finished (``on_drained(migration, version)`` is called whenever the last request
of a version ends, so the watcher heartbeats at once when that version is an old one).

The snapshot a request acts under is also kept in a context variable (:func:`acting_version`),
so the write path's fence (:mod:`dualwrite.runtime.fence`) checks the version the request
really took, not the one the watcher holds when the write happens.

>>> from datetime import UTC, datetime
>>> from dualwrite.phases import Phase
>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> from dualwrite.state.registry import MigrationState
>>> spec = MigrationSpec(name="m", table="t", fields=(FieldSpec("email"),))
>>> t = datetime(2025, 1, 1, tzinfo=UTC)
>>> v7 = MigrationState("m", spec, Phase.DUAL_WRITE, 7, t, t)
>>> v8 = MigrationState("m", spec, Phase.BACKFILL, 8, t, t)
>>> drained = []
>>> inflight = InFlight(on_drained=lambda m, v: drained.append(v))
>>> with inflight.request(v7) as snap:
...     (snap.version, acting_version("m"), inflight.reportable(v8))
(7, 7, (7, <Phase.DUAL_WRITE: 'dual_write'>))
>>> inflight.reportable(v8), drained, acting_version("m")
((8, <Phase.BACKFILL: 'backfill'>), [7], None)
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from dualwrite.phases import Behaviour, Phase, behaviour
from dualwrite.state.registry import MigrationState

__all__ = ["InFlight", "RequestSnapshot", "acting_version"]

_ACTING: ContextVar[Mapping[str, int] | None] = ContextVar("dualwrite_acting", default=None)
_BUCKET_SECONDS = 60.0


def acting_version(migration: str) -> int | None:
    """The state version the current request took for ``migration`` (``None`` outside one)."""
    return (_ACTING.get() or {}).get(migration)


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    """The phase one request acts under, from its start to its end."""

    migration: str
    version: int
    phase: Phase
    behaviour: Behaviour


class InFlight:
    """Counts requests per (migration, version) and remembers the longest one lately."""

    def __init__(self, on_drained: Callable[[str, int], None] = lambda m, v: None) -> None:
        self._count: Counter[tuple[str, int]] = Counter()
        self._phase: dict[tuple[str, int], Phase] = {}
        self._started: dict[int, float] = {}
        self._next = 0
        self._on_drained = on_drained
        self._longest = (0.0, 0.0)  # (this bucket, the previous one)
        self._bucket_end = time.monotonic() + _BUCKET_SECONDS

    @contextlib.contextmanager
    def request(self, state: MigrationState) -> Iterator[RequestSnapshot]:
        """Count one request acting under ``state`` until the block ends."""
        key = (state.name, state.version)
        self._count[key] += 1
        self._phase[key] = state.phase
        ticket, self._next = self._next, self._next + 1
        self._started[ticket] = started = time.monotonic()
        token = _ACTING.set({**(_ACTING.get() or {}), state.name: state.version})
        try:
            yield RequestSnapshot(state.name, state.version, state.phase, behaviour(state.phase))
        finally:
            _ACTING.reset(token)
            del self._started[ticket]
            self._record(time.monotonic() - started)
            self._count[key] -= 1
            if self._count[key] <= 0:
                del self._count[key]
                del self._phase[key]
                self._on_drained(*key)

    def _record(self, seconds: float) -> None:
        now = time.monotonic()
        current, previous = self._longest
        if now >= self._bucket_end:
            current, previous = 0.0, current
            self._bucket_end = now + _BUCKET_SECONDS
        self._longest = (max(current, seconds), previous)

    def longest_seconds(self) -> float:
        """The longest request of the last one to two minutes, or the oldest still running."""
        now = time.monotonic()
        running = max((now - s for s in self._started.values()), default=0.0)
        return max(running, *self._longest)

    def in_flight(self, migration: str) -> dict[int, int]:
        """Requests in flight for ``migration``, by the version they act under."""
        return {v: n for (m, v), n in self._count.items() if m == migration}

    def reportable(self, state: MigrationState) -> tuple[int, Phase]:
        """The version (and its phase) this instance may report as observed: the oldest one
        a request still acts under, or ``state``'s once nothing older is in flight."""
        older = [v for (m, v) in self._count if m == state.name and v < state.version]
        if not older:
            return state.version, state.phase
        oldest = min(older)
        return oldest, self._phase[(state.name, oldest)]
