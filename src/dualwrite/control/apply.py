"""Doing, once the pure core decided: CAS + audit + NOTIFY in one transaction; audited refusals.

The admin API, the CLI and :mod:`dualwrite.control.finalize` share these steps, so every change
follows the same rules (see :mod:`dualwrite.control.transitions`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dualwrite.errors import ReasonRequiredError, TransitionConflictError
from dualwrite.phases import Decision, Phase
from dualwrite.state import audit_log, registry
from dualwrite.state.registry import MigrationState

__all__ = ["apply_decision", "audit_refusal", "check_request", "guard_results", "require_reason"]

log = logging.getLogger("dualwrite.control")


def guard_results(decision: Decision) -> list[dict[str, Any]]:
    """The guard results as stored in the audit log: ``[{"name", "passed", "reason"}]``."""
    return [asdict(g) for g in decision.guards]


def check_request(state: MigrationState, target: Phase, expected_version: int | None) -> None:
    if expected_version is not None and expected_version != state.version:
        raise TransitionConflictError(
            f"migration {state.name} is at version {state.version} ({state.phase}), not "
            f"{expected_version}: re-read and retry"
        )
    if state.phase is target:
        raise TransitionConflictError(
            f"migration {state.name} is already in {target} (version {state.version})"
        )


def require_reason(force: bool, reason: str | None) -> str | None:
    reason = reason.strip() if reason else None
    if force and not reason:
        raise ReasonRequiredError("a forced change needs a reason (it is kept in the audit log)")
    return reason


async def audit_refusal(
    engine: AsyncEngine, state: MigrationState, decision: Decision, actor: str, reason: str | None
) -> None:
    """Record a refused change in its own transaction (the change's was rolled back)."""
    try:
        async with engine.begin() as conn:
            await audit_log.record_audit(
                conn,
                audit_log.AuditRecord(
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


async def apply_decision(
    conn: AsyncConnection,
    state: MigrationState,
    decision: Decision,
    *,
    actor: str,
    reason: str | None,
    action: str = "phase",
) -> MigrationState:
    """CAS + audit + NOTIFY on ``conn`` (the caller commits)."""
    new = await registry.compare_and_swap_phase(conn, state.name, state.version, decision.target)
    await audit_log.record_audit(
        conn,
        audit_log.AuditRecord(
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
    await registry.notify_phase(conn, new)
    return new
