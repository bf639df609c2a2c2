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
  :class:`~dualwrite.errors.IllegalTransitionError` (HTTP 409: whether a target is one step
  away depends on the current phase): no guard can make them legal and ``force`` does not
  apply.
* **Guards.** Every failing guard is listed in :class:`~dualwrite.errors.GuardsFailedError`
  (HTTP 409). ``force=True`` overrides them, and only with a non-empty ``reason``
  (:class:`ReasonRequiredError`; the admin API's request model refuses it first, 422).
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
  nullable), then moves the phase; after ``contract -> read_switch`` (reads stay on
  ciphertext), ``dualwrite backfill --mode decrypt`` restores the values.
"""

from __future__ import annotations

import logging

from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.config import Settings
from dualwrite.control.apply import apply_decision, audit_refusal, check_request, require_reason
from dualwrite.control.facts import gather_facts
from dualwrite.control.finalize import finalize, remove_fence, restore_plaintext_columns
from dualwrite.errors import GuardsFailedError, TransitionConflictError
from dualwrite.logs import log_event
from dualwrite.phases import Decision, Phase, evaluate
from dualwrite.state import registry
from dualwrite.state.registry import MigrationState

__all__ = ["change_phase", "decide"]

log = logging.getLogger("dualwrite.control.transitions")


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
        state = await registry.get_migration(conn, name)
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
    (``alembic_cfg`` defaults to :func:`dualwrite.schema.migrate.alembic_config`).
    Logs a ``phase_changed`` or ``phase_refused`` event (:mod:`dualwrite.logs`).
    """
    tgt = Phase.parse(target) if not isinstance(target, Phase) else target
    try:
        before, new = await _change_phase(
            engine, name, tgt, actor=actor, reason=reason, force=force, settings=settings,
            keyring_current=keyring_current, expected_version=expected_version,
            alembic_cfg=alembic_cfg,
        )  # fmt: skip
    except GuardsFailedError as exc:
        log_event(
            log, "phase_refused", level=logging.WARNING, migration=name, to_phase=tgt.value,
            actor=actor, guards=[f.name for f in exc.failures],
        )  # fmt: skip
        raise
    log_event(
        log, "phase_changed", migration=new.name, from_phase=before.phase.value,
        to_phase=new.phase.value, from_version=before.version, to_version=new.version,
        actor=actor, force=force,
    )  # fmt: skip
    return new


async def _change_phase(
    engine: AsyncEngine,
    name: str,
    tgt: Phase,
    *,
    actor: str,
    reason: str | None,
    force: bool,
    settings: Settings,
    keyring_current: str | None,
    expected_version: int | None,
    alembic_cfg: Config | None,
) -> tuple[MigrationState, MigrationState]:
    """:func:`change_phase` without the events: (the state before, the state after)."""
    reason = require_reason(force, reason)
    async with engine.connect() as conn:
        current = await registry.get_migration(conn, name)
    if tgt is Phase.FINALIZED and current.phase is Phase.CONTRACT:
        return current, await finalize(
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
        check_request(current, tgt, expected_version)
        await restore_plaintext_columns(engine, current, settings, alembic_cfg)
        expected_version = current.version
    for _ in range(3):
        fence_gone = True
        if current.phase is Phase.CONTRACT and tgt is Phase.READ_SWITCH:
            # read_switch writes plaintext again: the fence goes, but only for a move that
            # will happen (after a rollback from finalized it keeps legacy plaintext out until
            # every instance observed contract)
            _, pre = await decide(
                engine, name, tgt, settings=settings, keyring_current=keyring_current
            )
            fence_gone = pre.allowed or force
            if fence_gone:
                await remove_fence(engine, current, settings)
        async with engine.begin() as conn:
            state = await registry.get_migration(conn, name)
            check_request(state, tgt, expected_version)
            facts = await gather_facts(conn, state, settings, keyring_current)
            decision = evaluate(state.phase, tgt, facts)  # illegal moves raise here
            if (decision.allowed or force) and fence_gone:
                return state, await apply_decision(
                    conn, state, decision, actor=actor, reason=reason
                )
        if not decision.allowed:
            break
        # the guards passed meanwhile, with the fence still up: once more, dropping it
    else:
        raise TransitionConflictError(
            f"migration {name}: the fleet changed during the move to {tgt}: retry"
        )
    await audit_refusal(engine, state, decision, actor, reason)
    decision.raise_if_refused()
    raise AssertionError("unreachable: a refused decision raises")  # pragma: no cover
