"""``contract -> finalized`` and back: the contract revision, run only after its guards pass.

:func:`finalize` evaluates the guards, applies the contract Alembic revision and moves the
phase. The revision (:func:`dualwrite.schema.ops.contract`) is a list of online steps: a
preflight that refuses while views, policies, indexes, constraints or publication column lists
still depend on the plaintext columns (one line each); the **fence** -- ``CHECK (<every
plaintext> IS NULL) NOT VALID``, then ``VALIDATE`` -- which is what decides that nothing is
left to lose (the ``plaintext_purged`` guard's count is only the early, friendly refusal: a
legacy write still open during that count commits before the fence can be added, and
``VALIDATE`` then finds it and refuses, keeping it); then the key guard, and ``DROP COLUMN``.
A failure leaves what is done recorded: ``dualwrite finalize`` again resumes. The table
rewrite and the remanence scan run after the phase moved (:mod:`dualwrite.control.purge`).

``finalized -> contract`` first runs that revision's downgrade
(:func:`restore_plaintext_columns`, re-adds the plaintext columns, nullable); ``contract ->
read_switch`` undoes what a failed finalize left (:func:`remove_fence`: the fence, and the
indexes and constraints it dropped are rebuilt), since that phase writes plaintext again.
"""

from __future__ import annotations

import logging

from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.config import Settings
from dualwrite.control.apply import (
    apply_decision,
    audit_refusal,
    check_request,
    require_reason,
)
from dualwrite.control.facts import gather_facts
from dualwrite.errors import ConfigError, PhaseError
from dualwrite.phases import Phase, evaluate
from dualwrite.schema import ddl, inspector, migrate
from dualwrite.schema.ddl import plans
from dualwrite.state import registry
from dualwrite.state.registry import MigrationState

__all__ = ["contract_revision", "finalize", "remove_fence", "restore_plaintext_columns"]

log = logging.getLogger("dualwrite.control.finalize")


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


async def _plaintext_present(engine: AsyncEngine, state: MigrationState) -> bool:
    async with engine.connect() as conn:
        return await inspector.plaintext_columns_present(conn, state.spec)


async def restore_plaintext_columns(
    engine: AsyncEngine, state: MigrationState, settings: Settings, cfg: Config | None
) -> None:
    """``finalized -> contract``: downgrade the contract revision unless already undone.

    Alembic's version decides, not the columns: a downgrade cut off after its schema steps but
    before Alembic recorded the version leaves the columns back at the contract revision, and
    running it again resumes (its steps are idempotent) and records the version, so a later
    finalize runs the contract revision again instead of skipping it."""
    cfg = cfg or migrate.alembic_config()
    revision, parent = contract_revision(cfg, state.name)
    at = await migrate.current(engine, cfg)
    if at != revision:
        if await _plaintext_present(engine, state):
            return
        raise PhaseError(
            f"the database is at revision {at}, not the contract revision {revision}: "
            f"downgrade to {revision} first, then retry"
        )
    log.info("migration %s: downgrading contract revision %s", state.name, revision)
    await migrate.downgrade(engine, cfg, parent, settings=settings)


async def remove_fence(engine: AsyncEngine, state: MigrationState, settings: Settings) -> None:
    """Undo a finalize that did not complete (a move back to ``read_switch``, which writes
    plaintext again): drop its fence, rebuild the indexes and constraints it dropped."""
    async with ddl.session(engine, settings) as ctx:
        if await ddl.drop_fence(ctx, state.spec):
            log.info("migration %s: removed the fence of an unfinished finalize", state.name)
        steps = await plans.restore_drops(ctx, state.spec)
        if steps:
            log.info("migration %s: rebuilding what an unfinished finalize dropped", state.name)
            await ddl.run_steps(ctx, state.name, "uncontract", steps)
            await ddl.Journal(ctx.conn, state.name, "uncontract").forget("contract", "uncontract")


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
       it, run the contract revision on another connection (its fence proves that every
       plaintext is purged, even when forced: a forced finalize never drops data), then CAS +
       audit (``action='finalize'``) + NOTIFY, and commit. Nobody can move the phase in
       between. The transaction holding the row lock touches no other table, so it blocks
       none of the revision's steps (they record progress in their own journal).
    """
    reason = require_reason(force, reason)
    target = Phase.FINALIZED
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, name)
        check_request(state, target, expected_version)
        facts = await gather_facts(conn, state, settings, keyring_current)
        decision = evaluate(state.phase, target, facts)
    if not (decision.allowed or force):
        await audit_refusal(engine, state, decision, actor, reason)
        decision.raise_if_refused()
    cfg = alembic_cfg or migrate.alembic_config()
    revision, parent = contract_revision(cfg, name)
    async with engine.begin() as conn:
        locked = await registry.get_migration(conn, name, for_update=True)
        check_request(locked, target, state.version)
        at = await migrate.current(engine, cfg)
        if at == revision and await _plaintext_present(engine, state):
            # a rollback cut off before Alembic recorded it (an older dualwrite did not redo it)
            await migrate.downgrade(engine, cfg, parent, settings=settings)
            at = parent
        if at != revision:
            log.info("migration %s: applying contract revision %s", name, revision)
            await migrate.upgrade(engine, cfg, revision, allow_contract=True, settings=settings)
        if await _plaintext_present(engine, state):
            raise PhaseError(
                f"migration {name}: the plaintext columns are still there after the contract "
                f"revision {revision}: nothing moved; check `alembic current`, then retry"
            )
        return await apply_decision(
            conn, locked, decision, actor=actor, reason=reason, action="finalize"
        )
