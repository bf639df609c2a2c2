"""Deferred blind-index indexes: dropped for an encrypt pass, rebuilt once it finishes.

Every row the backfill encrypts changes its blind-index columns, so PostgreSQL inserts into each
``ix_<table>_<field>_bidx`` index per row: on a table with few indexes that is a large share of
the write. With ``defer_indexes`` (``dualwrite backfill --defer-indexes``) an encrypt pass that
starts in ``dual_write`` or ``backfill`` drops those indexes first (``DROP INDEX
CONCURRENTLY``: no lock that live traffic waits on) and builds them again with ``CREATE INDEX
CONCURRENTLY`` when the pass finishes; the build's time counts in the run.

Why that is safe:

* in ``dual_write`` and ``backfill`` every search also matches the plaintext arm
  (:func:`dualwrite.runtime.search.search_clause`), so no search misses a row, it only scans the
  tenant's rows instead of the index (``unique`` fields' ``_uidx`` indexes are never dropped:
  they enforce the constraint);
* entering ``read_switch`` needs the guard ``blind_indexes_built``: a run stopped before it
  finished leaves the indexes missing, and the move is refused with the one-line reason, until
  any encrypt backfill finishes (each one rebuilds what is missing or INVALID, deferred or not);
* the builds are the expand's own steps (:class:`~dualwrite.schema.ddl.index.CreateIndex`):
  an INVALID leftover is dropped first, and the result must be valid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from dualwrite.db import connect_raw
from dualwrite.logs import log_event
from dualwrite.phases import BackfillMode, Phase
from dualwrite.schema import sql
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.index import CreateIndex, DropIndex
from dualwrite.spec import MigrationSpec

__all__ = [
    "DEFERRABLE_PHASES",
    "build_blind_indexes",
    "defer_before_pass",
    "drop_blind_indexes",
    "rebuild_after_pass",
]

log = logging.getLogger("dualwrite.backfill")

DEFERRABLE_PHASES = frozenset({Phase.DUAL_WRITE, Phase.BACKFILL})
"""Phases whose searches also read the plaintext arm: the indexes may be missing."""


def _builds(spec: MigrationSpec) -> list[tuple[str, CreateIndex]]:
    """``(index name, its build)`` of every searchable field, in the expand's order."""
    names = [sql.blind_index_name(spec, f.bidx_column) for f in spec.searchable if f.bidx_column]
    return [
        (n, CreateIndex(spec, n, s)) for n, s in zip(names, sql.blind_index_ddl(spec), strict=True)
    ]


def _context(
    conn: asyncpg.Connection, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> DdlContext:
    return DdlContext(conn=conn, connect=connect, say=log.info, warn=log.warning)


async def _apply(
    conn: asyncpg.Connection, engine: Any, spec: MigrationSpec, event: str, drop: bool
) -> list[str]:
    """Run the drop (or the build) of every blind-index index not already in that state;
    log ``event`` with the names and the seconds it took when there was any."""
    ctx, started, changed = _context(conn, lambda: connect_raw(engine)), time.perf_counter(), []
    for index, build in _builds(spec):
        step: CreateIndex | DropIndex = DropIndex(spec, index) if drop else build
        if not await step.done(ctx, {}):
            await step.start(ctx, {})
            changed.append(index)
    if changed:
        log_event(log, event, migration=spec.name, indexes=changed,
                  seconds=round(time.perf_counter() - started, 3))  # fmt: skip
    return changed


async def drop_blind_indexes(
    conn: asyncpg.Connection, engine: Any, spec: MigrationSpec
) -> list[str]:
    """Drop the blind-index indexes that exist (``CONCURRENTLY``); their names."""
    return await _apply(conn, engine, spec, "backfill_indexes_deferred", drop=True)


async def build_blind_indexes(
    conn: asyncpg.Connection, engine: Any, spec: MigrationSpec
) -> list[str]:
    """Build every blind-index index that is missing or INVALID (``CONCURRENTLY``); their
    names (empty when all were there: a catalog read per index, nothing else)."""
    return await _apply(conn, engine, spec, "backfill_indexes_built", drop=False)


async def defer_before_pass(
    conn: asyncpg.Connection, engine: Any, spec: MigrationSpec, options: Any, phase: Phase
) -> None:
    """The worker's hook: drop the indexes when ``options.defer_indexes`` asks for it and the
    pass encrypts in a phase whose searches do not need them (else nothing)."""
    if not (options.defer_indexes and options.mode is BackfillMode.ENCRYPT) or options.dry_run:
        return
    if phase not in DEFERRABLE_PHASES:
        log.info("blind-index indexes kept: searches in %s read them", phase.value)
        return
    await drop_blind_indexes(conn, engine, spec)


async def rebuild_after_pass(
    conn: asyncpg.Connection, engine: Any, spec: MigrationSpec, options: Any
) -> None:
    """The worker's hook when an encrypt run finishes: build what is missing or INVALID."""
    if options.mode is BackfillMode.ENCRYPT and not options.dry_run:
        await build_blind_indexes(conn, engine, spec)
