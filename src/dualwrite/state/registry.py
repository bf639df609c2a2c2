"""The registry of migrations: one state row per migration, changed only by compare-and-swap.

Every function takes an open :class:`~sqlalchemy.ext.asyncio.AsyncConnection` and does one
thing; the caller owns the transaction. The phase row is changed only by
:func:`compare_and_swap_phase`, which succeeds for exactly one of two racing writers; the
same transaction writes the audit record (:mod:`dualwrite.state.audit_log`).

>>> async with engine.begin() as conn:                                # doctest: +SKIP
...     state = await get_migration(conn, "clients_pii")
...     state = await compare_and_swap_phase(conn, state.name, state.version, Phase.DUAL_WRITE)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.errors import TransitionConflictError, UnknownMigrationError
from dualwrite.phases import Phase
from dualwrite.schema import sql as schema_sql
from dualwrite.spec import MigrationSpec

__all__ = [
    "MigrationState",
    "compare_and_swap_phase",
    "database_now",
    "get_migration",
    "list_migrations",
    "notify_phase",
    "resolve_name",
    "update_backfill_control",
]


@dataclass(frozen=True, slots=True)
class MigrationState:
    """One row of ``dualwrite_migrations``."""

    name: str
    spec: MigrationSpec
    phase: Phase
    version: int
    changed_at: datetime
    created_at: datetime
    backfill_control: Mapping[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return self.spec.table


_STATE_COLUMNS = "name, spec, phase, version, changed_at, created_at, backfill_control"


def _state(row: Any) -> MigrationState:
    return MigrationState(
        name=row.name,
        spec=MigrationSpec.from_json(row.spec),
        phase=Phase(row.phase),
        version=int(row.version),
        changed_at=row.changed_at,
        created_at=row.created_at,
        backfill_control=dict(row.backfill_control or {}),
    )


async def list_migrations(conn: AsyncConnection) -> list[MigrationState]:
    rows = await conn.execute(
        text(f"SELECT {_STATE_COLUMNS} FROM dualwrite_migrations ORDER BY name")
    )
    return [_state(r) for r in rows]


async def get_migration(
    conn: AsyncConnection, name: str, *, for_update: bool = False
) -> MigrationState:
    """The state of migration ``name``; :class:`UnknownMigrationError` if it is not registered."""
    lock = " FOR UPDATE" if for_update else ""
    row = (
        await conn.execute(
            text(f"SELECT {_STATE_COLUMNS} FROM dualwrite_migrations WHERE name = :n{lock}"),
            {"n": name},
        )
    ).first()
    if row is None:
        raise UnknownMigrationError(f"unknown migration {name!r}")
    return _state(row)


async def resolve_name(conn: AsyncConnection, name: str | None) -> str:
    """``name`` if given, else the only registered migration (one-line errors otherwise)."""
    if name is not None:
        return name
    names = [s.name for s in await list_migrations(conn)]
    if len(names) == 1:
        return names[0]
    if not names:
        raise UnknownMigrationError("no migration is registered: run `dualwrite db upgrade`")
    raise UnknownMigrationError(
        f"several migrations are registered ({', '.join(names)}): name one with --migration"
    )


async def compare_and_swap_phase(
    conn: AsyncConnection, name: str, expected_version: int, target: Phase
) -> MigrationState:
    """Move ``name`` to ``target`` if its version is still ``expected_version``; bump the version.

    Raises :class:`TransitionConflictError` when another change won the race.
    """
    row = (
        await conn.execute(
            text(
                "UPDATE dualwrite_migrations SET phase = :phase, version = version + 1, "
                "changed_at = clock_timestamp() WHERE name = :n AND version = :v "
                f"RETURNING {_STATE_COLUMNS}"
            ),
            {"phase": target.value, "n": name, "v": expected_version},
        )
    ).first()
    if row is None:
        current = await get_migration(conn, name)  # raises for an unknown name
        raise TransitionConflictError(
            f"migration {name} changed concurrently (expected version {expected_version}, "
            f"now {current.version} in {current.phase.value}): re-read and retry"
        )
    return _state(row)


async def notify_phase(conn: AsyncConnection, state: MigrationState) -> None:
    """Announce a change on the ``dualwrite_phase`` channel (delivered at commit)."""
    payload = json.dumps({"name": state.name, "phase": state.phase.value, "version": state.version})
    await conn.execute(
        text("SELECT pg_notify(:ch, :p)"), {"ch": schema_sql.NOTIFY_CHANNEL, "p": payload}
    )


async def update_backfill_control(
    conn: AsyncConnection, name: str, patch: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge ``patch`` into the backfill knobs (``paused``, ``batch_size``, ...); return them."""
    row = (
        await conn.execute(
            text(
                "UPDATE dualwrite_migrations SET backfill_control = backfill_control || "
                "CAST(:p AS jsonb) WHERE name = :n RETURNING backfill_control"
            ),
            {"p": json.dumps(dict(patch)), "n": name},
        )
    ).first()
    if row is None:
        raise UnknownMigrationError(f"unknown migration {name!r}")
    return dict(row[0])


async def database_now(conn: AsyncConnection) -> datetime:
    """The database clock (heartbeats are judged by it, never by an app host's clock)."""
    value = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
    assert isinstance(value, datetime)
    return value
