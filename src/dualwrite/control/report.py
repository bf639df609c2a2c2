"""One JSON-friendly status report per migration, shared by ``GET /admin/migrations/{name}``
and ``dualwrite status``.

>>> async with engine.connect() as conn:                                       # doctest: +SKIP
...     state = await registry.get_migration(conn, "clients_pii")
...     report = await migration_report(conn, state, settings, keyring_current="v1")
>>> report["coverage"]["percent"], report["fleet"]["live"]                   # doctest: +SKIP
(100.0, 2)

Everything is read in the caller's transaction with one scan of the table (coverage). Datetimes
are ISO 8601 strings, so the dict can go straight to JSON.

* ``backfill.remaining`` is coverage-based, per mode: ``encrypt`` = rows whose ciphertext or
  blind index is missing, ``decrypt`` = rows with ciphertext but no plaintext, ``purge`` = rows
  still holding plaintext. ``backfill.rows_done`` sums the checkpoints per mode.
* ``backfill.rate_rows_per_s`` (per mode with a checkpoint) is the current run's throughput:
  its rows done over ``updated_at - started_at`` (all shards of the mode together), ``null`` when
  the checkpoints lack those times or the span is not positive. ``backfill.eta_seconds`` is
  ``remaining / rate``: ``null`` when the rate is ``null`` or 0, when every checkpoint of the mode
  is finished (no run is going), or for ``rekey`` (coverage does not count what is left to re-key).
* ``fleet.instances[].live`` uses the guards' definition (a heartbeat within 3 poll intervals
  on the database clock); ``up_to_date`` means it observed the current state version.
* ``moves`` evaluates the next and previous phase's guards now (``null`` at either end), so an
  operator sees what blocks the next step before asking for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.config import Settings
from dualwrite.control.facts import gather_facts
from dualwrite.phases import (
    Facts,
    GateView,
    InstanceView,
    VerificationView,
    behaviour,
    evaluate,
    live_instances,
    next_phase,
    previous_phase,
)
from dualwrite.schema import inspector
from dualwrite.state import checkpoints, read_events
from dualwrite.state.registry import MigrationState


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def state_summary(state: MigrationState) -> dict[str, Any]:
    """The short form (``GET /admin/migrations``, the answer to a phase change)."""
    return {
        "name": state.name,
        "table": state.table,
        "fields": [f.name for f in state.spec.fields],
        "phase": state.phase.value,
        "version": state.version,
        "changed_at": _ts(state.changed_at),
        "created_at": _ts(state.created_at),
        "behaviour": behaviour(state.phase).describe(),
        "backfill_control": dict(state.backfill_control),
    }


def backfill_rates(
    cps: Sequence[checkpoints.Checkpoint], remaining: Mapping[str, int]
) -> dict[str, dict[str, float | None]]:
    """Per mode: ``rate_rows_per_s`` and ``eta_seconds`` of its run (pure; see the module doc).

    >>> from datetime import UTC, datetime, timedelta
    >>> t0 = datetime(2025, 1, 1, tzinfo=UTC)
    >>> cp = checkpoints.Checkpoint("m", "encrypt", rows_done=500, started_at=t0,
    ...                       updated_at=t0 + timedelta(seconds=10))
    >>> backfill_rates([cp], {"encrypt": 1000})
    {'encrypt': {'rate_rows_per_s': 50.0, 'eta_seconds': 20.0}}
    >>> backfill_rates([cp], {"encrypt": 0})["encrypt"]["eta_seconds"]
    0.0
    >>> backfill_rates([checkpoints.Checkpoint("m", "purge", rows_done=3)], {"purge": 9})
    {'purge': {'rate_rows_per_s': None, 'eta_seconds': None}}
    """
    by_mode: dict[str, list[checkpoints.Checkpoint]] = {}
    for cp in cps:
        by_mode.setdefault(cp.mode, []).append(cp)
    rates: dict[str, dict[str, float | None]] = {}
    for mode, of_mode in by_mode.items():
        starts = [cp.started_at for cp in of_mode if cp.started_at is not None]
        updates = [cp.updated_at for cp in of_mode if cp.updated_at is not None]
        span = (
            (max(updates) - min(starts)).total_seconds()
            if len(starts) == len(updates) == len(of_mode)
            else 0.0
        )
        rate = sum(cp.rows_done for cp in of_mode) / span if span > 0 else None
        running = any(cp.finished_at is None for cp in of_mode)
        eta = remaining[mode] / rate if rate and running and mode in remaining else None
        rates[mode] = {
            "rate_rows_per_s": None if rate is None else round(rate, 3),
            "eta_seconds": None if eta is None else round(eta, 1),
        }
    return rates


def _instance(i: InstanceView, facts: Facts, live: set[str]) -> dict[str, Any]:
    return {
        **i.summary(),
        "last_seen": _ts(i.last_seen),
        "live": i.instance_id in live,
        "up_to_date": i.observed_version is not None and i.observed_version >= facts.state_version,
    }


def _verification(v: VerificationView | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {
        "started_at": _ts(v.started_at),
        "finished_at": _ts(v.finished_at),
        "full": v.full,
        "phase": v.phase.value,
        "mismatches": v.mismatches,
        "missing": v.missing,
        "undecryptable": v.undecryptable,
    }


def _gate(g: GateView | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {"finished_at": _ts(g.finished_at), "phase": g.phase.value, "passed": g.passed}


async def migration_report(
    conn: AsyncConnection,
    state: MigrationState,
    settings: Settings,
    keyring_current: str | None,
) -> dict[str, Any]:
    """Phase, behaviour, coverage, backfill progress, results, fleet and next-move guards."""
    cov = await inspector.coverage(conn, state.spec)
    facts = await gather_facts(conn, state, settings, keyring_current, coverage=cov)
    cps = await checkpoints.list_checkpoints(conn, state.name)
    events = await read_events.read_event_totals(conn, state.name, state.version)
    live = {i.instance_id for i in live_instances(facts)}
    rows_done: dict[str, int] = {}
    for cp in cps:
        rows_done[cp.mode] = rows_done.get(cp.mode, 0) + cp.rows_done
    remaining = {
        "encrypt": cov.rows_missing_ciphertext,
        "decrypt": cov.rows_ciphertext_without_plaintext,
        "purge": cov.rows_with_plaintext,
    }
    rates = backfill_rates(cps, remaining)
    moves: dict[str, Any] = {}
    for direction, target in (
        ("forward", next_phase(state.phase)),
        ("backward", previous_phase(state.phase)),
    ):
        moves[direction] = (
            evaluate(state.phase, target, facts).describe() if target is not None else None
        )
    return {
        **state_summary(state),
        "now": _ts(facts.now),
        "coverage": {
            "total_rows": cov.total_rows,
            "percent": round(cov.percent, 4),
            "rows_missing_ciphertext": cov.rows_missing_ciphertext,
            "rows_ciphertext_without_plaintext": cov.rows_ciphertext_without_plaintext,
            "rows_with_plaintext": cov.rows_with_plaintext,
            "schema_expanded": facts.schema_expanded,
            "plaintext_columns_present": facts.plaintext_columns_present,
        },
        "backfill": {
            "control": dict(state.backfill_control),
            "rows_done": rows_done,
            "remaining": remaining,
            "rate_rows_per_s": {m: r["rate_rows_per_s"] for m, r in rates.items()},
            "eta_seconds": {m: r["eta_seconds"] for m, r in rates.items()},
            "finished_at": _ts(facts.backfill_finished_at),
            "checkpoints": [
                {
                    "mode": cp.mode,
                    "shard": cp.shard,
                    "run_id": cp.run_id,
                    "rows_done": cp.rows_done,
                    "rows_failed": cp.rows_failed,
                    "started_at": _ts(cp.started_at),
                    "updated_at": _ts(cp.updated_at),
                    "finished_at": _ts(cp.finished_at),
                    # why its worker holds back (latency budget), while the run is unfinished
                    "throttle": dict(cp.throttle) if cp.throttle and not cp.finished_at else None,
                }
                for cp in cps
            ],
        },
        "last_verification": _verification(facts.last_verification),
        "last_gate": _gate(facts.last_gate),
        "read_events_since_phase_entered": events,
        "fleet": {
            "live": len(live),
            "poll_interval_seconds": settings.poll_interval_seconds,
            "instances": [_instance(i, facts, live) for i in facts.instances],
        },
        "moves": moves,
    }
