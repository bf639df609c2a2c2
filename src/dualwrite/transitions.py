"""Phase changes against the database: gather the facts, let the pure core decide, then act.

Deciding is separate from doing. :func:`gather_facts` reads a :class:`~dualwrite.phases.Facts`
snapshot (coverage, fleet heartbeats, last verification and latency gate, backfill end, read
events since the current phase was entered, schema state, all on the database clock);
:func:`dualwrite.phases.evaluate` decides; :func:`change_phase` applies the decision:

>>> state = await change_phase(engine, "clients_pii", "dual_write", actor="ops:alice",
...                            reason="start encryption", force=False, settings=settings,
...                            keyring_current="v1")                        # doctest: +SKIP
>>> state.phase, state.version                                             # doctest: +SKIP
(<Phase.DUAL_WRITE: 'dual_write'>, 2)

Rules (the admin API and ``dualwrite phase set`` share them, because both call this module):

* **Compare-and-swap.** The state row is read without a lock, the guards are evaluated, and the
  change is a CAS on the version that was read (or on ``expected_version`` when the caller
  passes one). Of two racing changes exactly one wins; the other gets
  :class:`~dualwrite.errors.TransitionConflictError` (HTTP 409). Asking for the phase the
  migration is already in is also a conflict (someone else got there first).
* **Illegal moves** (skipping a phase, leaving ``finalized`` other than to ``contract``) raise
  :class:`~dualwrite.errors.IllegalTransitionError` (HTTP 400): no guard can make them legal
  and ``force`` does not apply.
* **Guards.** Every failing guard is listed in :class:`~dualwrite.errors.GuardsFailedError`
  (HTTP 409). ``force=True`` overrides them, and only with a non-empty ``reason``
  (:class:`ReasonRequiredError`, HTTP 400).
* **Audit.** Every applied change writes one ``dualwrite_audit`` row in the same transaction as
  the CAS (who, when, from/to phase and version, reason, ``forced``, every guard result), and
  ``NOTIFY dualwrite_phase`` is sent on commit. ``forced`` is true when the change went through
  *only* because of ``force`` (at least one guard failed). A change refused by its guards
  writes one row with ``outcome='refused'`` (and the guard results) in its own transaction, so
  attempts to skip safety are on record. Input rejected before any guard is evaluated (unknown
  migration or phase, illegal move, missing reason, lost race) writes no row.
* **Schema.** ``contract -> finalized`` goes through :func:`finalize`, which applies the
  contract Alembic revision (drops the plaintext columns) after its guards pass.
  ``finalized -> contract`` first runs that revision's downgrade (re-adds the plaintext columns,
  nullable), then moves the phase; ``dualwrite backfill --mode decrypt`` restores the values.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dualwrite import migrate, store
from dualwrite.config import Settings
from dualwrite.errors import ConfigError, PhaseError, TransitionConflictError
from dualwrite.phases import Decision, Facts, Phase, evaluate
from dualwrite.spec import MigrationSpec
from dualwrite.store import MigrationState

log = logging.getLogger("dualwrite.transitions")

STALE_GUARD_TRIGGER = "dualwrite_stale_guard"


class ReasonRequiredError(PhaseError):
    """``force`` was asked for without a reason (the audit log must say why)."""


# --- facts ------------------------------------------------------------------------------------


async def schema_expanded(conn: AsyncConnection, spec: MigrationSpec) -> bool:
    """Every ciphertext (and blind-index) column exists, and so does the stale-ciphertext
    trigger while the plaintext columns do."""
    wanted = [f.ciphertext_column for f in spec.fields]
    wanted += [f.bidx_column for f in spec.fields if f.bidx_column]
    found = (
        await conn.execute(
            text(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = :t AND column_name = ANY(:cols)"
            ),
            {"t": spec.table, "cols": wanted},
        )
    ).scalar_one()
    if int(found) != len(wanted):
        return False
    if not await store.plaintext_columns_present(conn, spec):
        return True  # after the contract revision the trigger has nothing left to guard
    trigger = (
        await conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = :g "
                "AND tgrelid = to_regclass(:t))"
            ),
            {"g": STALE_GUARD_TRIGGER, "t": spec.table},
        )
    ).scalar_one()
    return bool(trigger)


async def gather_facts(
    conn: AsyncConnection,
    state: MigrationState,
    settings: Settings,
    keyring_current: str | None,
    *,
    coverage: store.Coverage | None = None,
) -> Facts:
    """Everything the guards look at, read on ``conn`` (one full scan of the table for coverage,
    unless the caller already has a ``coverage`` from this transaction).

    Read events count from ``state.version`` on: the version at which the current phase was
    entered, so mismatches seen before the switch never block ``read_switch -> contract``.
    """
    spec = state.spec
    cov = coverage if coverage is not None else await store.coverage(conn, spec)
    events = await store.read_event_totals(conn, state.name, state.version)
    return Facts(
        now=await store.database_now(conn),
        state_version=state.version,
        phase_changed_at=state.changed_at,
        schema_expanded=await schema_expanded(conn, spec),
        plaintext_columns_present=await store.plaintext_columns_present(conn, spec),
        current_key_version=keyring_current,
        instances=tuple(await store.list_instances(conn, state.name)),
        rows_missing_ciphertext=cov.rows_missing_ciphertext,
        rows_ciphertext_without_plaintext=cov.rows_ciphertext_without_plaintext,
        rows_with_plaintext=cov.rows_with_plaintext,
        backfill_finished_at=await store.last_backfill_finished_at(conn, state.name),
        last_verification=await store.latest_verification(conn, state.name),
        last_gate=await store.latest_gate(conn, state.name),
        shadow_mismatches_since_switch=events.get("shadow_mismatch", 0),
        fallbacks_since_switch=events.get("read_fallback", 0),
        poll_interval_seconds=settings.poll_interval_seconds,
        soak_seconds=settings.soak_seconds,
        require_latency_gate=settings.require_latency_gate,
    )


def guard_results(decision: Decision) -> list[dict[str, Any]]:
    """The guard results as stored in the audit log: ``[{"name", "passed", "reason"}]``."""
    return [asdict(g) for g in decision.guards]


# --- changing the phase -----------------------------------------------------------------------


def _check_request(state: MigrationState, target: Phase, expected_version: int | None) -> None:
    if expected_version is not None and expected_version != state.version:
        raise TransitionConflictError(
            f"migration {state.name} is at version {state.version} ({state.phase}), not "
            f"{expected_version}: re-read and retry"
        )
    if state.phase is target:
        raise TransitionConflictError(
            f"migration {state.name} is already in {target} (version {state.version})"
        )


def _require_reason(force: bool, reason: str | None) -> str | None:
    reason = reason.strip() if reason else None
    if force and not reason:
        raise ReasonRequiredError("a forced change needs a reason (it is kept in the audit log)")
    return reason


async def _audit_refusal(
    engine: AsyncEngine, state: MigrationState, decision: Decision, actor: str, reason: str | None
) -> None:
    """Record a refused change in its own transaction (the change's was rolled back)."""
    try:
        async with engine.begin() as conn:
            await store.record_audit(
                conn,
                store.AuditRecord(
                    migration=state.name,
                    actor=actor,
                    from_phase=state.phase.value,
                    to_phase=decision.target.value,
                    reason=reason,
                    forced=False,
                    outcome="refused",
                    from_version=state.version,
                    to_version=None,
                    guards=guard_results(decision),
                ),
            )
    except Exception as exc:  # the refusal itself is the answer that matters
        log.warning("could not audit a refused change of %s: %s", state.name, type(exc).__name__)


async def _apply(
    conn: AsyncConnection,
    state: MigrationState,
    decision: Decision,
    *,
    actor: str,
    reason: str | None,
    action: str = "phase",
) -> MigrationState:
    """CAS + audit + NOTIFY on ``conn`` (the caller commits)."""
    new = await store.compare_and_swap_phase(conn, state.name, state.version, decision.target)
    await store.record_audit(
        conn,
        store.AuditRecord(
            migration=state.name,
            actor=actor,
            action=action,
            from_phase=state.phase.value,
            to_phase=new.phase.value,
            reason=reason,
            forced=not decision.allowed,
            outcome="applied",
            from_version=state.version,
            to_version=new.version,
            guards=guard_results(decision),
        ),
    )
    await store.notify_phase(conn, new)
    return new


async def decide(
    engine: AsyncEngine,
    name: str,
    target: str | Phase,
    *,
    settings: Settings,
    keyring_current: str | None,
) -> tuple[MigrationState, Decision]:
    """Evaluate a move without applying it (a dry run: ``phase set --dry-run``, status pages)."""
    tgt = Phase.parse(target)
    async with engine.connect() as conn:
        state = await store.get_migration(conn, name)
        facts = await gather_facts(conn, state, settings, keyring_current)
    return state, evaluate(state.phase, tgt, facts)


async def change_phase(
    engine: AsyncEngine,
    name: str,
    target: str | Phase,
    *,
    actor: str,
    reason: str | None,
    force: bool,
    settings: Settings,
    keyring_current: str | None,
    expected_version: int | None = None,
    alembic_cfg: Config | None = None,
) -> MigrationState:
    """Move migration ``name`` to ``target`` (see the module docstring for every rule).

    Raises ``UnknownMigrationError``, ``UnknownPhaseError``, ``IllegalTransitionError``,
    ``ReasonRequiredError``, ``GuardsFailedError`` (``.failures`` lists every failing guard)
    or ``TransitionConflictError``. Moves into or out of ``finalized`` also run Alembic
    (``alembic_cfg`` defaults to :func:`dualwrite.migrate.alembic_config`).
    """
    tgt = Phase.parse(target)
    reason = _require_reason(force, reason)
    async with engine.connect() as conn:
        current = await store.get_migration(conn, name)
    if tgt is Phase.FINALIZED and current.phase is Phase.CONTRACT:
        return await finalize(
            engine,
            name,
            actor=actor,
            reason=reason,
            force=force,
            settings=settings,
            keyring_current=keyring_current,
            expected_version=expected_version,
            alembic_cfg=alembic_cfg,
        )
    if current.phase is Phase.FINALIZED and tgt is Phase.CONTRACT:
        _check_request(current, tgt, expected_version)
        await _restore_plaintext_columns(engine, current, settings, alembic_cfg)
        expected_version = current.version

    async with engine.begin() as conn:
        state = await store.get_migration(conn, name)
        _check_request(state, tgt, expected_version)
        facts = await gather_facts(conn, state, settings, keyring_current)
        decision = evaluate(state.phase, tgt, facts)  # illegal moves raise here
        if decision.allowed or force:
            return await _apply(conn, state, decision, actor=actor, reason=reason)
    await _audit_refusal(engine, state, decision, actor, reason)
    decision.raise_if_refused()
    raise AssertionError("unreachable: a refused decision raises")  # pragma: no cover


# --- the contract revision --------------------------------------------------------------------


def contract_revision(cfg: Config, name: str) -> tuple[str, str]:
    """``(revision, parent)`` of the contract revision of migration ``name``.

    With several contract revisions (several migrations), each must name its migration with a
    module attribute ``dualwrite_migration = "<name>"``.
    """
    candidates = []
    for rev in migrate.contract_scripts(cfg):
        owner = getattr(rev.module, "dualwrite_migration", None)
        if owner in (None, name):
            candidates.append((rev.revision, rev.down_revision, owner))
    named = [c for c in candidates if c[2] == name]
    chosen = named or candidates
    if len(chosen) != 1:
        what = "no" if not chosen else "several"
        raise ConfigError(
            f"{what} contract revision found for migration {name}: mark it with "
            f"`{migrate.CONTRACT_MARKER} = True` and `dualwrite_migration = {name!r}`"
        )
    revision, parent, _ = chosen[0]
    if not isinstance(parent, str):
        raise ConfigError(f"contract revision {revision} must have exactly one parent")
    return revision, parent


async def _restore_plaintext_columns(
    engine: AsyncEngine, state: MigrationState, settings: Settings, cfg: Config | None
) -> None:
    """``finalized -> contract``: downgrade the contract revision unless already undone."""
    async with engine.connect() as conn:
        if await store.plaintext_columns_present(conn, state.spec):
            return
    cfg = cfg or migrate.alembic_config()
    revision, parent = contract_revision(cfg, state.name)
    at = await migrate.current(engine, cfg)
    if at != revision:
        raise PhaseError(
            f"the database is at revision {at}, not the contract revision {revision}: "
            f"downgrade to {revision} first, then retry"
        )
    log.info("migration %s: downgrading contract revision %s", state.name, revision)
    await migrate.downgrade(engine, cfg, parent, settings=settings)


async def finalize(
    engine: AsyncEngine,
    name: str,
    *,
    actor: str,
    reason: str | None,
    force: bool,
    settings: Settings,
    keyring_current: str | None,
    expected_version: int | None = None,
    alembic_cfg: Config | None = None,
) -> MigrationState:
    """``contract -> finalized``: evaluate the guards, apply the contract revision, move.

    1. In a short transaction: read the state, gather the facts, evaluate (refusal: audited,
       ``GuardsFailedError``). The facts transaction ends before any DDL, so it holds no lock
       on the table the revision alters.
    2. Lock the state row (``FOR UPDATE``) and check its version is unchanged; while holding
       it, run the contract revision on another connection (it re-checks that every plaintext
       is purged, even when forced: a forced finalize never drops data), then CAS + audit
       (``action='finalize'``) + NOTIFY, and commit. Nobody can move the phase in between.
    """
    reason = _require_reason(force, reason)
    target = Phase.FINALIZED
    async with engine.begin() as conn:
        state = await store.get_migration(conn, name)
        _check_request(state, target, expected_version)
        facts = await gather_facts(conn, state, settings, keyring_current)
        decision = evaluate(state.phase, target, facts)
    if not (decision.allowed or force):
        await _audit_refusal(engine, state, decision, actor, reason)
        decision.raise_if_refused()
    cfg = alembic_cfg or migrate.alembic_config()
    revision, _ = contract_revision(cfg, name)
    async with engine.begin() as conn:
        locked = await store.get_migration(conn, name, for_update=True)
        _check_request(locked, target, state.version)
        if await migrate.current(engine, cfg) != revision:
            log.info("migration %s: applying contract revision %s", name, revision)
            await migrate.upgrade(engine, cfg, revision, allow_contract=True, settings=settings)
        return await _apply(conn, locked, decision, actor=actor, reason=reason, action="finalize")
