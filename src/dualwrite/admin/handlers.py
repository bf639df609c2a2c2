"""One function per admin route: read the context, call the control layer, shape the answer.

Each takes the :class:`~dualwrite.admin.context.AdminContext` and the parsed inputs; the
router (:mod:`dualwrite.admin.router`) only wires them to paths. Failures are raised as
:class:`~dualwrite.errors.DualwriteError` and mapped by the route class.
"""

from __future__ import annotations

import logging
from typing import Any

from dualwrite.admin.context import AdminContext
from dualwrite.admin.models import BackfillKnobs, GateResult, PhaseChange
from dualwrite.control.knobs import set_backfill_control
from dualwrite.control.report import migration_report, state_summary
from dualwrite.control.transitions import change_phase
from dualwrite.state import audit_log, registry, results

__all__ = [
    "change_backfill_knobs",
    "get_migration",
    "list_audit_records",
    "list_migrations",
    "pause_backfill",
    "record_gate",
    "resume_backfill",
    "set_phase",
]

log = logging.getLogger("dualwrite.admin")


async def _refresh_watcher(ctx: AdminContext) -> None:
    if ctx.watcher is not None:
        try:
            await ctx.watcher.refresh()
        except Exception as exc:  # the change is committed; polling will catch up
            log.warning("watcher refresh after an admin change failed: %s", type(exc).__name__)


async def list_migrations(ctx: AdminContext) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        states = await registry.list_migrations(conn)
    return {"migrations": [state_summary(s) for s in states]}


async def get_migration(ctx: AdminContext, name: str) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        state = await registry.get_migration(conn, name)
        return await migration_report(conn, state, ctx.settings, ctx.keyring_current)


async def set_phase(ctx: AdminContext, name: str, body: PhaseChange, actor: str) -> dict[str, Any]:
    new = await change_phase(
        ctx.engine,
        name,
        body.target,
        actor=actor,
        reason=body.reason,
        force=body.force,
        settings=ctx.settings,
        keyring_current=ctx.keyring_current,
        expected_version=body.expected_version,
        alembic_cfg=ctx.alembic_cfg,
    )
    await _refresh_watcher(ctx)
    return state_summary(new)


async def _control(
    ctx: AdminContext, name: str, patch: dict[str, Any], reason: str | None, actor: str
) -> dict[str, Any]:
    control = await set_backfill_control(ctx.engine, name, patch, actor=actor, reason=reason)
    await _refresh_watcher(ctx)
    return {"name": name, "backfill_control": control}


async def pause_backfill(
    ctx: AdminContext, name: str, reason: str | None, actor: str
) -> dict[str, Any]:
    return await _control(ctx, name, {"paused": True}, reason, actor)


async def resume_backfill(
    ctx: AdminContext, name: str, reason: str | None, actor: str
) -> dict[str, Any]:
    return await _control(ctx, name, {"paused": False}, reason, actor)


async def change_backfill_knobs(
    ctx: AdminContext, name: str, body: BackfillKnobs, actor: str
) -> dict[str, Any]:
    patch = body.model_dump(exclude_none=True, exclude={"reason"})
    return await _control(ctx, name, patch, body.reason, actor)


async def record_gate(ctx: AdminContext, name: str, body: GateResult) -> dict[str, Any]:
    phase = body.phase
    async with ctx.engine.begin() as conn:
        await registry.get_migration(conn, name)  # 404 for an unknown migration
        await results.record_gate(conn, name, phase, body.passed, body.summary)
        recorded = await results.latest_gate(conn, name)
    assert recorded is not None
    return {
        "name": name,
        "phase": phase.value,
        "passed": body.passed,
        "finished_at": recorded.finished_at.isoformat(),
    }


async def list_audit_records(
    ctx: AdminContext, migration: str | None, limit: int
) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        records = await audit_log.list_audit(conn, migration, limit)
    return {
        "records": [
            {
                "id": r.id,
                "at": r.at.isoformat() if r.at else None,
                "migration": r.migration,
                "actor": r.actor,
                "action": r.action,
                "outcome": r.outcome,
                "from_phase": r.from_phase,
                "to_phase": r.to_phase,
                "from_version": r.from_version,
                "to_version": r.to_version,
                "reason": r.reason,
                "forced": r.forced,
                "guards": r.guards,
            }
            for r in records
        ]
    }
