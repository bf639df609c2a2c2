"""Backfill admission: the fleet rules a run must pass before it touches a row (DESIGN §4, §5).

The phase table (:data:`dualwrite.phases.BEHAVIOURS`) says which modes a phase allows; this
module adds what the *fleet* must be ready for, judged by the pure fleet guards of
:mod:`dualwrite.phases.guards` on one snapshot of the heartbeats (database clock):

* ``rekey`` and ``encrypt`` write ciphertext under the backfiller's current key ``vN``: refused
  while a live instance does not hold ``vN`` (``fleet_holds_current_key``) -- that instance
  would fail every read of the rows written;
* ``decrypt`` restores plaintext from ciphertext: it runs only once every live instance
  observes the current state version (``fleet_observed_<phase>``), so every writer writes
  plaintext again and the restore converges under traffic;
* ``purge`` has no fleet rule of its own (the move into ``contract`` waited for the fleet).

>>> [g.__name__ for g in admission_guards(BackfillMode.REKEY, Phase.BACKFILL)]
['fleet_holds_current_key']
>>> admission_guards(BackfillMode.PURGE, Phase.CONTRACT)
()

A refusal is :class:`~dualwrite.errors.BackfillRefusedError` (a ``GuardsFailedError``: one line
naming the rule and the instances; exit 1 from the CLI, 409 from an HTTP layer). It is judged
once, in :meth:`dualwrite.backfill.Backfiller.preflight` (a ``--dry-run`` is refused the same
way); the batches of a running backfill fence themselves separately.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.errors import BackfillRefusedError
from dualwrite.phases import BackfillMode, Facts, Guard, GuardResult, Phase
from dualwrite.phases.guards import fleet_holds_current_key, fleet_observed
from dualwrite.state import fleet, registry
from dualwrite.state.registry import MigrationState

__all__ = ["admission_guards", "admit", "fleet_facts", "refusal"]

_HINTS = {
    BackfillMode.ENCRYPT: "give every instance that key first, or stop those instances",
    BackfillMode.REKEY: "give every instance that key first, or stop those instances",
    BackfillMode.DECRYPT: "wait until every instance observes the current phase",
}


def admission_guards(mode: BackfillMode, phase: Phase) -> tuple[Guard, ...]:
    """The fleet guards a run of ``mode`` in ``phase`` needs (pure; see the module docstring)."""
    if mode in (BackfillMode.ENCRYPT, BackfillMode.REKEY):
        return (fleet_holds_current_key,)
    if mode is BackfillMode.DECRYPT:
        return (fleet_observed(phase),)
    return ()


def refusal(mode: BackfillMode, phase: Phase, facts: Facts) -> BackfillRefusedError | None:
    """The error refusing ``mode`` on ``facts`` (pure), or ``None`` when it may run.

    >>> from datetime import UTC, datetime
    >>> from dualwrite.phases import InstanceView
    >>> t = datetime(2025, 1, 1, tzinfo=UTC)
    >>> old = InstanceView("api-2", Phase.BACKFILL, 5, frozenset({"v1"}), t, host="h2", pid=12)
    >>> facts = Facts(now=t, state_version=5, phase_changed_at=t, schema_expanded=True,
    ...               plaintext_columns_present=True, current_key_version="v2", instances=(old,))
    >>> print(refusal(BackfillMode.REKEY, Phase.BACKFILL, facts))
    backfill --mode rekey refused: fleet_holds_current_key: instance api-2 (host h2, pid 12) \
holds v1, needs v2 (give every instance that key first, or stop those instances)
    """
    failures: list[GuardResult] = [
        r for r in (g(facts) for g in admission_guards(mode, phase)) if not r.passed
    ]
    if not failures:
        return None
    listed = "; ".join(f"{g.name}: {g.reason}" for g in failures)
    return BackfillRefusedError(
        f"backfill --mode {mode} refused: {listed} ({_HINTS[mode]})", failures
    )


async def fleet_facts(
    conn: AsyncConnection, state: MigrationState, *, current_key: str | None, poll_interval: float
) -> Facts:
    """A snapshot of the fleet of ``state``'s migration (heartbeats, its version, the database
    clock). Only the fleet fields are read; the data fields keep their defaults, which no
    admission guard looks at."""
    return Facts(
        now=await registry.database_now(conn),
        state_version=state.version,
        phase_changed_at=state.changed_at,
        schema_expanded=False,
        plaintext_columns_present=False,
        current_key_version=current_key,
        instances=tuple(await fleet.list_instances(conn, state.name)),
        poll_interval_seconds=poll_interval,
    )


async def admit(
    conn: AsyncConnection,
    state: MigrationState,
    mode: BackfillMode,
    *,
    current_key: str | None,
    poll_interval: float,
) -> None:
    """Raise :class:`BackfillRefusedError` unless the fleet is ready for ``mode`` now."""
    if not admission_guards(mode, state.phase):
        return
    facts = await fleet_facts(conn, state, current_key=current_key, poll_interval=poll_interval)
    refused = refusal(mode, state.phase, facts)
    if refused is not None:
        raise refused
