"""Gather the facts the phase guards judge, from the database (one snapshot, one clock).

>>> async with engine.connect() as conn:                                      # doctest: +SKIP
...     state = await registry.get_migration(conn, "clients_pii")
...     facts = await gather_facts(conn, state, settings, keyring_current="v1")
>>> evaluate(state.phase, "backfill", facts).allowed                         # doctest: +SKIP
False
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.config import Settings
from dualwrite.phases import Facts
from dualwrite.schema import inspector
from dualwrite.state import checkpoints, fleet, read_events, registry, results
from dualwrite.state.registry import MigrationState

__all__ = ["gather_facts"]


async def gather_facts(
    conn: AsyncConnection,
    state: MigrationState,
    settings: Settings,
    keyring_current: str | None,
    *,
    coverage: inspector.Coverage | None = None,
) -> Facts:
    """Everything the guards look at, read on ``conn`` (one full scan of the table for coverage,
    unless the caller already has a ``coverage`` from this transaction).

    Read events count from ``state.version`` on: the version at which the current phase was
    entered, so mismatches seen before the switch never block ``read_switch -> contract``.
    """
    spec = state.spec
    cov = coverage if coverage is not None else await inspector.coverage(conn, spec)
    events = await read_events.read_event_totals(conn, state.name, state.version)
    return Facts(
        now=await registry.database_now(conn),
        state_version=state.version,
        phase_changed_at=state.changed_at,
        schema_expanded=await inspector.schema_expanded(conn, spec),
        plaintext_columns_present=await inspector.plaintext_columns_present(conn, spec),
        current_key_version=keyring_current,
        instances=tuple(await fleet.list_instances(conn, state.name)),
        rows_missing_ciphertext=cov.rows_missing_ciphertext,
        rows_ciphertext_without_plaintext=cov.rows_ciphertext_without_plaintext,
        rows_with_plaintext=cov.rows_with_plaintext,
        backfill_finished_at=await checkpoints.last_backfill_finished_at(conn, state.name),
        last_verification=await results.latest_verification(conn, state.name),
        last_gate=await results.latest_gate(conn, state.name),
        shadow_mismatches_since_switch=events.get("shadow_mismatch", 0),
        fallbacks_since_switch=events.get("read_fallback", 0),
        poll_interval_seconds=settings.poll_interval_seconds,
        soak_seconds=settings.soak_seconds,
        require_latency_gate=settings.require_latency_gate,
        guard_trigger=await inspector.guard_trigger(conn, spec),
        decrypt_finished_at=await checkpoints.last_finished_at(conn, state.name, "decrypt"),
        decrypt_unfinished=await checkpoints.unfinished_runs(conn, state.name, "decrypt") > 0,
        blind_indexes_missing=await inspector.missing_blind_indexes(conn, spec),
    )
