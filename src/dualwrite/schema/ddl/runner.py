"""The online-DDL runner: one operation (``expand``, ``contract``, ...) as a list of steps, each
in its own transaction, progress in the journal, so a rerun resumes where a kill left off.

>>> ctx = DdlContext(conn, connect)                                   # doctest: +SKIP
>>> await run_steps(ctx, "clients_pii", "expand", plans.expand(CLIENTS_PII))  # doctest: +SKIP

For each step in order: skip it when the journal says done and the catalog agrees; otherwise
run :meth:`~dualwrite.schema.ddl.step.Step.capture` once (recorded before any change), mark it
``started``, :meth:`start` and :meth:`complete` it unless the catalog already shows it done,
and mark it ``done``. A step that refuses is marked ``failed`` and its error propagates (one
line, naming what blocked it); nothing after it runs. Two runs of the same migration never
interleave: the runner holds a session advisory lock on the migration while it works.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from dualwrite.errors import SchemaStepError
from dualwrite.schema.ddl.context import DdlContext
from dualwrite.schema.ddl.journal import Journal, ensure_journal
from dualwrite.schema.ddl.step import Step

__all__ = ["migration_lock", "run_steps"]

_LOCK_WAIT_SECONDS = 15.0


class migration_lock:
    """A session advisory lock on the migration's schema steps (waits up to 15 s)."""

    def __init__(self, ctx: DdlContext, migration: str) -> None:
        self.ctx, self.migration = ctx, migration

    async def __aenter__(self) -> migration_lock:
        key = f"dualwrite.schema:{self.migration}"
        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        while not await self.ctx.conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            if time.monotonic() > deadline:
                holder = await self.ctx.conn.fetchval(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objid = hashtext($1)::oid LIMIT 1",
                    key,
                )
                raise SchemaStepError(
                    f"another dualwrite schema operation runs on migration {self.migration} "
                    f"(pid {holder}): let it finish, then retry"
                )
            await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if not self.ctx.conn.is_closed():
            await self.ctx.conn.execute(
                "SELECT pg_advisory_unlock(hashtext($1))", f"dualwrite.schema:{self.migration}"
            )


async def run_steps(
    ctx: DdlContext, migration: str, operation: str, steps: Sequence[Step]
) -> dict[str, dict[str, object]]:
    """Run ``steps`` of ``operation`` for ``migration``; returns each step's recorded detail."""
    await ensure_journal(ctx.conn)
    journal = Journal(ctx.conn, migration, operation)
    details: dict[str, dict[str, object]] = {}
    async with migration_lock(ctx, migration):
        entries = await journal.entries()
        for position, step in enumerate(steps, start=1):
            status, detail = entries.get(step.name, (None, {}))
            label = f"{operation} step {position}/{len(steps)} {step.name}"
            if status == "done" and await step.done(ctx, detail):
                details[step.name] = detail
                continue
            if not step.captured(detail):
                detail = {**detail, **(await step.capture(ctx))}
            await journal.record(step.name, "started", position=position, detail=detail)
            try:
                if not await step.done(ctx, detail):
                    ctx.say(f"{label}: running")
                    await step.start(ctx, detail)
                    await step.complete(ctx, detail)
            except BaseException:
                with contextlib.suppress(Exception):
                    await journal.record(step.name, "failed", position=position)
                raise
            await journal.record(step.name, "done", position=position)
            details[step.name] = detail
    return details
