"""Gauges an API instance refreshes from the database on its heartbeat cadence.

Facts that only the database knows (the fleet, the latest gate verdict and verification) are
exported by every API instance, read in its heartbeat transaction every poll interval (a few
small indexed queries on dualwrite's own state tables, never a scan of the migrated table), so
a scrape never touches the database and a dashboard shows them without a one-shot command
(``dualwrite gate``, ``dualwrite verify``) having to be scraped:

* ``dualwrite_instances{migration,phase}``: live instances per observed phase;
* ``dualwrite_instances_behind{migration}``: live instances that have not observed the
  current state-row version (the "instances lagging the phase" alert);
* ``dualwrite_phase_changed_timestamp_seconds{migration}``: when the current phase began;
* ``dualwrite_latency_gate_passed`` / ``_timestamp_seconds``: the latest gate verdict;
* ``dualwrite_verification_findings{kind}`` / ``dualwrite_verification_timestamp_seconds``:
  the latest full verification.

Liveness is the guards' definition (a heartbeat at most 3 poll intervals old, database clock).

>>> await export_heartbeat_gauges(conn, metrics, poll_interval=2.0)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.errors import is_connection_lost
from dualwrite.metrics.families import PHASES, Metrics
from dualwrite.phases import Facts, InstanceView, live_instances
from dualwrite.state import fleet, registry, results
from dualwrite.state.registry import MigrationState

__all__ = ["export_heartbeat_gauges", "fleet_counts"]

log = logging.getLogger("dualwrite.metrics.heartbeat")


def fleet_counts(
    instances: Sequence[InstanceView], state_version: int, now: datetime, poll_interval: float
) -> tuple[dict[str, int], int]:
    """Live instances per observed phase, and how many live ones observe an older version.

    >>> from datetime import UTC, datetime, timedelta
    >>> from dualwrite.phases import Phase
    >>> now = datetime(2025, 1, 1, tzinfo=UTC)
    >>> seen = lambda i, phase, v, age: InstanceView(i, Phase(phase), v, frozenset(),
    ...                                              now - timedelta(seconds=age))
    >>> fleet_counts([seen("a", "backfill", 4, 1), seen("b", "dual_write", 3, 1),
    ...               seen("dead", "plaintext", 1, 60)], 4, now, 2.0)
    ({'backfill': 1, 'dual_write': 1}, 1)
    """
    facts = Facts(
        now=now,
        state_version=state_version,
        phase_changed_at=now,
        schema_expanded=True,
        plaintext_columns_present=True,
        current_key_version=None,
        instances=tuple(instances),
        poll_interval_seconds=poll_interval,
    )
    counts: Counter[str] = Counter()
    behind = 0
    for i in live_instances(facts):
        if i.observed_phase is not None:
            counts[i.observed_phase.value] += 1
        if i.observed_version is None or i.observed_version < state_version:
            behind += 1
    return dict(counts), behind


async def export_heartbeat_gauges(
    conn: AsyncConnection, metrics: Metrics, *, poll_interval: float
) -> None:
    """Refresh every database-derived gauge for every registered migration.

    Runs under a savepoint of the caller's (heartbeat) transaction: a failure here is logged
    and never costs the heartbeat itself."""
    try:
        async with conn.begin_nested():
            now = await registry.database_now(conn)
            for state in await registry.list_migrations(conn):
                await _export_one(conn, metrics, state, now, poll_interval)
    except Exception as exc:
        if is_connection_lost(exc):
            raise
        log.warning("heartbeat gauges not refreshed: %s", type(exc).__name__)


async def _export_one(
    conn: AsyncConnection,
    metrics: Metrics,
    state: MigrationState,
    now: datetime,
    poll_interval: float,
) -> None:
    name = state.name
    instances = await fleet.list_instances(conn, name)
    counts, behind = fleet_counts(instances, state.version, now, poll_interval)
    for phase in PHASES:
        metrics.instances.labels(migration=name, phase=phase).set(counts.get(phase, 0))
    metrics.instances_behind.labels(migration=name).set(behind)
    metrics.phase_changed.labels(migration=name).set(state.changed_at.timestamp())
    gate = await results.latest_gate(conn, name)
    if gate is not None:
        metrics.gate_passed.labels(migration=name).set(1.0 if gate.passed else 0.0)
        metrics.gate_time.labels(migration=name).set(gate.finished_at.timestamp())
    verification = await results.latest_verification(conn, name)
    if verification is not None:
        findings = {
            "missing": verification.missing,
            "mismatched": verification.mismatches,
            "undecryptable": verification.undecryptable,
        }
        for kind, n in findings.items():
            metrics.verification_findings.labels(migration=name, kind=kind).set(n)
        metrics.verification_time.labels(migration=name).set(verification.finished_at.timestamp())
