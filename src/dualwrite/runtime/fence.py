"""Self-fencing: a write refuses itself instead of writing under a phase the fleet has left.

Every write transaction of the framework's own write path (:class:`~dualwrite.runtime.table.
EncryptedTable` inserts and updates, the ORM flush) asks its :class:`WriteFence` (the
:class:`~dualwrite.runtime.watcher.PhaseWatcher`) before its first statement, in the same
transaction:

1. **fresh**: the watcher's last successful refresh is younger than its liveness window
   (``3 x poll_interval``, local monotonic clock) -- an instance cut off from the database for
   longer than that counts as vanished for the fleet, so it must not write with its cached
   phase when it comes back;
2. **key**: when the write seals ciphertext, no live instance of the fleet lacks the current
   key (DESIGN §4: a writer whose current key is ``vN`` refuses while a live instance cannot
   decrypt ``vN``; the watcher reads the fleet's key versions on every poll);
3. **current**: one ``SELECT phase, version`` of the state row returns the version the request
   took its snapshot under (:func:`~dualwrite.runtime.inflight.acting_version`, else the
   watcher's) and the phase the write acts under.

A ``contract`` write that finds ``finalized`` is let through: it writes no plaintext, and if the
columns are gone the statement fails on them and is retried without them (the finalize window).
Otherwise :class:`~dualwrite.errors.FencedError` (503 for the API), nothing written; when only the
snapshot was behind (``stale``), the app may retry at once under a fresh snapshot (the
reference service does), so a move costs no failed request.

>>> from dualwrite.phases import Phase
>>> check_current("clients_pii", 7, Phase.BACKFILL, Phase.BACKFILL, 7)
>>> check_current("clients_pii", 7, Phase.BACKFILL, Phase.DUAL_WRITE, 8)
Traceback (most recent call last):
...
dualwrite.errors.FencedError: clients_pii: this instance acts under version 7 (backfill) but \
the state is at version 8 (dual_write): write refused (self-fencing), nothing written; retry
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.errors import FencedError
from dualwrite.phases import Behaviour, InstanceView, Phase, live_instances
from dualwrite.phases.facts import Facts
from dualwrite.state import fleet, registry

__all__ = [
    "STATE_ROW_SQL",
    "WriteFence",
    "check_current",
    "check_fresh",
    "fleet_key_refusals",
    "lacking_current_key",
]

STATE_ROW_SQL = "SELECT phase, version FROM dualwrite_migrations WHERE name = :n"


class WriteFence(Protocol):
    """What the write path asks before writing (a :class:`PhaseWatcher` is one)."""

    def serve(self, migration: str) -> None:
        """Record that this process serves ``migration`` (it heartbeats it)."""

    async def fence(self, conn: Any, migration: str, behaviour: Behaviour) -> None:
        """Raise :class:`FencedError` unless a write under ``behaviour`` may proceed in the
        transaction of ``conn`` (an ``AsyncConnection``)."""

    def fence_sync(self, conn: Any, migration: str, behaviour: Behaviour) -> None:
        """:meth:`fence` on a synchronous ``Connection`` (the ORM flush)."""


def check_fresh(migration: str, age: float | None, window: float, what: str = "write") -> None:
    """Refuse when the last successful refresh is ``age`` seconds old, ``window`` or more
    (``what``: ``write``, or ``request`` for a snapshot taken for a read)."""
    if age is None or age >= window:
        seen = "never" if age is None else f"{age:.1f}s ago"
        done = "nothing written" if what == "write" else "nothing served"
        raise FencedError(
            f"{migration}: the last successful phase refresh of this instance was {seen}, not "
            f"within its liveness window ({window:.1f}s): {what} refused (self-fencing), "
            f"{done}; retry once it reaches the database again"
        )


def check_current(
    migration: str, acting: int, acting_phase: Phase, db_phase: Phase, db_version: int
) -> None:
    """Refuse unless the state row is at ``acting`` (see the module docstring)."""
    if db_version == acting and db_phase is acting_phase:
        return
    if acting_phase is Phase.CONTRACT and db_phase is Phase.FINALIZED:
        return
    raise FencedError(
        f"{migration}: this instance acts under version {acting} ({acting_phase}) but the "
        f"state is at version {db_version} ({db_phase}): write refused (self-fencing), "
        "nothing written; retry",
        stale=db_version > acting,
    )


def lacking_current_key(
    migration: str,
    current_key: str | None,
    instances: Iterable[InstanceView],
    now: datetime,
    fallback_interval: float,
) -> str | None:
    """The refusal of a writer whose current key some live instance does not hold, or ``None``.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2025, 1, 1, tzinfo=UTC)
    >>> old = InstanceView("api-1", None, None, frozenset({"v1"}), t, host="h", pid=3)
    >>> lacking_current_key("clients_pii", "v2", [old], t, 2.0)
    'clients_pii: current key v2 is not held by live instance api-1 (host h, pid 3) holding \
v1: writes refused until every live instance holds it (key rotation rule)'
    >>> lacking_current_key("clients_pii", "v1", [old], t, 2.0) is None
    True
    """
    if current_key is None:
        return None
    facts = Facts(
        now=now, state_version=0, phase_changed_at=now, schema_expanded=True,
        plaintext_columns_present=True, current_key_version=current_key,
        instances=tuple(instances), poll_interval_seconds=fallback_interval,
    )  # fmt: skip
    lacking = [i for i in live_instances(facts) if current_key not in i.key_versions]
    if not lacking:
        return None
    named = ", ".join(
        f"live {i.label} holding {', '.join(sorted(i.key_versions)) or 'no keys'}"
        for i in lacking[:3]
    )
    return (
        f"{migration}: current key {current_key} is not held by {named}: writes refused until "
        "every live instance holds it (key rotation rule)"
    )


async def fleet_key_refusals(
    conn: AsyncConnection,
    migrations: Iterable[str],
    current_key: str,
    instance_id: str,
    fallback_interval: float,
) -> dict[str, str]:
    """:func:`lacking_current_key` of every migration in ``migrations`` that has a refusal,
    judged on the fleet's heartbeats (every instance but ``instance_id``), database clock."""
    now = await registry.database_now(conn)
    found = {}
    for name in migrations:
        others = [i for i in await fleet.list_instances(conn, name) if i.instance_id != instance_id]
        refusal = lacking_current_key(name, current_key, others, now, fallback_interval)
        if refusal is not None:
            found[name] = refusal
    return found
