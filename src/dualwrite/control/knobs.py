"""Backfill knobs: pause, resume and change a running backfill, audited (admin API and CLI).

The knobs live in ``dualwrite_migrations.backfill_control``; every backfill worker reads them
before each batch (:class:`dualwrite.backfill.throttle.Knobs`). A change writes one audit row
(``action='backfill_control'``) in the same transaction.

>>> await set_backfill_control(engine, "clients_pii", {"paused": True},
...                            actor="cli:ops", reason="night batch")   # doctest: +SKIP
{'paused': True}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.errors import RequestError
from dualwrite.state import audit_log, registry

__all__ = ["KNOBS", "set_backfill_control"]

KNOBS = ("paused", "batch_size", "max_rows_per_second", "sleep_ratio")
"""The keys a backfill control document may hold."""


async def set_backfill_control(
    engine: AsyncEngine,
    name: str,
    patch: Mapping[str, Any],
    *,
    actor: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """Merge ``patch`` into migration ``name``'s knobs and audit it; return the knobs now.

    Raises :class:`~dualwrite.errors.RequestError` for an empty patch or an unknown knob and
    :class:`~dualwrite.errors.UnknownMigrationError` for an unknown migration.
    """
    if not patch:
        raise RequestError("nothing to change: give batch_size, max_rows_per_second or sleep_ratio")
    unknown = sorted(set(patch) - set(KNOBS))
    if unknown:
        raise RequestError(f"unknown backfill knob(s) {', '.join(unknown)}: use {', '.join(KNOBS)}")
    summary = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(patch.items()))
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, name)
        control = await registry.update_backfill_control(conn, name, patch)
        await audit_log.record_audit(
            conn,
            audit_log.AuditRecord(
                migration=name,
                actor=actor,
                action="backfill_control",
                from_phase=state.phase.value,
                to_phase=state.phase.value,
                reason=summary + (f" ({reason})" if reason else ""),
                from_version=state.version,
                to_version=state.version,
            ),
        )
    return control
