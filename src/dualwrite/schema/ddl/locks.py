"""What a schema step waits for, and how long it backs off (pure: no I/O, no clock).

PostgreSQL's table-lock conflict table, the jittered backoff between attempts, and how a
blocking session is named in progress lines and errors (pid, state, transaction age; never its
query text, which may hold PII).

>>> sorted(conflicting("SHARE UPDATE EXCLUSIVE"))[:2]
['AccessExclusiveLock', 'ExclusiveLock']
>>> "AccessShareLock" in conflicting("ACCESS EXCLUSIVE")
True
>>> backoff_seconds(0, jitter=1.0), backoff_seconds(3, jitter=0.5), backoff_seconds(30, jitter=1.0)
(0.25, 1.0, 4.0)
>>> Blocker(4242, "idle in transaction", 12.34, "psql").describe()
'pid 4242 (idle in transaction, transaction open 12.3 s, application psql)'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LOCK_MODES", "Blocker", "backoff_seconds", "conflicting", "describe_blockers"]

LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
"""``pg_locks.mode`` names of the table-level locks, weakest first."""

# position i conflicts with the modes listed (PostgreSQL documentation, "Table-Level Locks")
_CONFLICTS: dict[str, tuple[int, ...]] = {
    "AccessShareLock": (7,),
    "RowShareLock": (6, 7),
    "RowExclusiveLock": (4, 5, 6, 7),
    "ShareUpdateExclusiveLock": (3, 4, 5, 6, 7),
    "ShareLock": (2, 3, 5, 6, 7),
    "ShareRowExclusiveLock": (2, 3, 4, 5, 6, 7),
    "ExclusiveLock": (1, 2, 3, 4, 5, 6, 7),
    "AccessExclusiveLock": (0, 1, 2, 3, 4, 5, 6, 7),
}


def _mode_name(mode: str) -> str:
    """``"SHARE ROW EXCLUSIVE"`` (SQL spelling) or ``"ShareRowExclusiveLock"`` -> the latter."""
    if mode in _CONFLICTS:
        return mode
    name = "".join(word.capitalize() for word in mode.split()) + "Lock"
    if name not in _CONFLICTS:
        raise ValueError(f"unknown lock mode {mode!r}")
    return name


def conflicting(mode: str) -> frozenset[str]:
    """The ``pg_locks.mode`` values that conflict with ``mode`` (either spelling)."""
    return frozenset(LOCK_MODES[i] for i in _CONFLICTS[_mode_name(mode)])


def backoff_seconds(attempt: int, *, jitter: float, base: float = 0.25, cap: float = 4.0) -> float:
    """Pause before retry ``attempt`` (0-based): ``base * 2**attempt`` capped at ``cap``, scaled
    by ``jitter`` in ``[0.5, 1.0]`` (the caller draws it) so retrying peers do not align."""
    growth = float(1 << min(attempt, 16))
    return round(min(cap, base * growth) * jitter, 6)


@dataclass(frozen=True, slots=True)
class Blocker:
    """A session holding what a step waits for."""

    pid: int
    state: str | None
    transaction_seconds: float | None
    application: str | None = None

    def describe(self) -> str:
        parts = [self.state or "unknown state"]
        if self.transaction_seconds is not None:
            parts.append(f"transaction open {self.transaction_seconds:.1f} s")
        if self.application:
            parts.append(f"application {self.application}")
        return f"pid {self.pid} ({', '.join(parts)})"


def describe_blockers(blockers: list[Blocker], limit: int = 3) -> str:
    """``"pid 1 (...), pid 2 (...) and 3 more"`` or ``"no session found"``."""
    if not blockers:
        return "no blocking session found (it ended, or is not visible to this role)"
    shown = ", ".join(b.describe() for b in blockers[:limit])
    more = len(blockers) - limit
    return shown + (f" and {more} more" if more > 0 else "")
