"""Rewrite the table after the drop, so the plaintext leaves its files (dead tuples, TOAST,
free space, dropped-column values in live tuples).

Methods (``auto`` picks the first that applies):

* ``repack`` -- ``pg_repack --no-kill-backend`` when the extension is installed in the
  database and a client of the same version is found: online (brief ACCESS EXCLUSIVE at its
  start and at the swap, with its own wait timeout, never cancelling anyone); run outside any
  transaction of ours. A run killed half-way leaves its trigger and log table behind: the
  next run removes them (``repack.repack_drop``) before starting again;
* ``vacuum-full`` -- ``VACUUM FULL`` holds ACCESS EXCLUSIVE for the whole rewrite, so it runs
  only with an operator-granted offline budget: refused when the estimate from the table size
  exceeds it, cancelled (and rolled back by PostgreSQL) if it runs longer; the lock time is
  measured;
* otherwise (or ``none``) the rewrite is reported **pending** with how to do it.

Either way it waits first until no snapshot or replication slot predates the purge
(:mod:`~dualwrite.remanence.horizon`). The outcome is recorded in ``dualwrite_schema_steps``
(operation ``rewrite``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.errors import DualwriteError, RequestError
from dualwrite.remanence.horizon import wait_for_horizon
from dualwrite.remanence.report import RewriteReport
from dualwrite.schema import ddl
from dualwrite.spec import MigrationSpec

__all__ = ["METHODS", "RewriteOptions", "RewritePlan", "decide", "repack_status", "rewrite"]

log = logging.getLogger("dualwrite.schema.rewrite")

METHODS = ("auto", "repack", "vacuum-full", "none")


class RewriteOptions:
    """``method`` (:data:`METHODS`), ``budget`` (offline seconds granted for VACUUM FULL)."""

    def __init__(self, method: str = "auto", budget: float | None = None) -> None:
        if method not in METHODS:
            raise RequestError(f"unknown rewrite method {method!r} (one of {', '.join(METHODS)})")
        if budget is not None and budget <= 0:
            raise RequestError("--offline-rewrite-budget must be a positive number of seconds")
        self.method, self.budget = method, budget


def _client(settings: Any, major: int) -> str | None:
    for candidate in (
        getattr(settings, "pg_repack_path", None),
        shutil.which("pg_repack"),
        f"/usr/lib/postgresql/{major}/bin/pg_repack",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


async def repack_status(conn: asyncpg.Connection, settings: Any) -> tuple[str | None, str]:
    """``(client path, "")`` when pg_repack can run here, else ``(None, why not)``."""
    version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_repack'")
    if version is None:
        return None, "the pg_repack extension is not installed in this database"
    major = int(await conn.fetchval("SHOW server_version_num")) // 10000
    client = _client(settings, major)
    if client is None:
        return None, "no pg_repack client (PATH, PG_REPACK_PATH or the server's bindir)"
    proc = await asyncio.create_subprocess_exec(
        client, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    found = out.decode().split()[-1] if out.split() else "?"
    if found != str(version):
        return None, f"the pg_repack client {found} does not match the extension {version}"
    return client, ""


def _connection_env(engine: AsyncEngine) -> dict[str, str]:
    url = engine.url
    env = dict(os.environ)
    host = url.host or url.query.get("host")
    port = url.port or url.query.get("port")
    for key, value in (
        ("PGHOST", host),
        ("PGPORT", port),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
        ("PGDATABASE", url.database),
    ):
        if value is not None:
            env[key] = str(value if not isinstance(value, tuple) else value[0])
    return env


async def _clean_repack_leftovers(ctx: ddl.DdlContext, table: str) -> None:
    """``table`` is the quoted name (:attr:`~dualwrite.spec.MigrationSpec.sql_table`), as in
    every function here."""
    leftover = await ctx.conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) "
        "AND tgname = 'repack_trigger'",
        table,
    )
    running = await ctx.conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_repack'"
    )
    if leftover and not running:
        ctx.say(f"removing what an interrupted pg_repack left on {table}")

        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT repack.repack_drop(to_regclass($1)::oid, 4)", table)

        await ctx.locked("repack cleanup", table, "ACCESS EXCLUSIVE", go)


async def _repack(
    engine: AsyncEngine, ctx: ddl.DdlContext, client: str, table: str, wait: float
) -> tuple[bool, str]:
    await _clean_repack_leftovers(ctx, table)
    qualified = str(await ctx.conn.fetchval("SELECT to_regclass($1)::text", table))
    superuser = await ctx.conn.fetchval(
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    args = [client, "--no-kill-backend", "--wait-timeout", str(max(1, int(wait))), "--no-order"]
    args += ["--table", qualified, "--no-password"]
    if not superuser:
        args.append("--no-superuser-check")
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=_connection_env(engine),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    text = (err or out).decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        return False, f"pg_repack failed: {text[-1] if text else proc.returncode}"
    if any("skipping" in line.lower() or "timed out" in line.lower() for line in text):
        return False, f"pg_repack skipped the table: {text[-1]}"
    return True, ""


@dataclass(frozen=True, slots=True)
class RewritePlan:
    """What :func:`decide` chose: a ``method`` to run, or none and why (``refuse``: the
    operator asked for something that cannot be done, so it is an error, not "pending")."""

    method: str | None
    reason: str = ""
    refuse: bool = False


def decide(
    requested: str, budget: float | None, repack_problem: str, estimate_seconds: float
) -> RewritePlan:
    """Pure: which rewrite runs (``repack_problem`` is ``""`` when pg_repack can run).

    >>> decide("auto", None, "", 3.0).method
    'repack'
    >>> decide("auto", 5.0, "no client", 3.0).method
    'vacuum-full'
    >>> decide("auto", None, "no client", 3.0).reason
    'pg_repack unavailable (no client) and no offline budget'
    >>> decide("vacuum-full", 1.0, "", 3.0).refuse
    True
    """
    if requested == "none":
        return RewritePlan(None, "--rewrite none")
    method = requested
    if requested == "auto":
        method = "repack" if not repack_problem else ("vacuum-full" if budget else "")
        if not method:
            return RewritePlan(
                None, f"pg_repack unavailable ({repack_problem}) and no offline budget"
            )
    if method == "repack":
        if repack_problem:
            return RewritePlan(None, f"pg_repack cannot run here: {repack_problem}", True)
        return RewritePlan("repack")
    if budget is None:
        return RewritePlan(
            None,
            "VACUUM FULL holds ACCESS EXCLUSIVE for the whole rewrite: grant an offline lock "
            "budget with --offline-rewrite-budget SECONDS (or use pg_repack)",
            True,
        )
    if estimate_seconds > budget:
        return RewritePlan(
            None,
            f"VACUUM FULL is estimated at {estimate_seconds:.1f} s of ACCESS EXCLUSIVE, over "
            f"the budget of {budget:g} s",
            requested == "vacuum-full",
        )
    return RewritePlan("vacuum-full")


async def rewrite(
    engine: AsyncEngine,
    spec: MigrationSpec,
    settings: Any,
    options: RewriteOptions,
    *,
    say: Callable[[str], None] = log.info,
) -> RewriteReport:
    """Rewrite ``spec``'s table (see the module docstring). A rewrite that cannot run now is
    reported pending with how to do it; only a request that cannot be met raises."""
    report = RewriteReport(spec.name, spec.table, "pending")
    async with ddl.session(engine, settings) as ctx:
        ctx.say = say
        conn = ctx.conn
        phase = await conn.fetchval(
            "SELECT phase FROM dualwrite_migrations WHERE name = $1", spec.name
        )
        if phase != "finalized":
            raise DualwriteError(
                f"migration {spec.name} is in phase {phase}: the rewrite runs after finalize "
                "(the plaintext columns must be dropped first)"
            )
        await ddl.ensure_journal(conn)
        journal = ddl.Journal(conn, spec.name, "rewrite")
        report.size_before = await _total_size(conn, spec.sql_table)
        rate = float(getattr(settings, "rewrite_estimate_mb_per_second", 20.0))
        estimate = report.size_before / (rate * 1e6)
        client, problem = await repack_status(conn, settings)
        plan = decide(options.method, options.budget, problem, estimate)
        if plan.refuse:
            raise DualwriteError(plan.reason)
        report.how = (
            f"`dualwrite rewrite {spec.name} --method repack` once pg_repack runs here "
            f"({problem or 'available'}), or `dualwrite rewrite {spec.name} --method "
            f"vacuum-full --offline-rewrite-budget SECONDS` in a maintenance window "
            f"(estimated {estimate:.1f} s of ACCESS EXCLUSIVE)"
        )
        if plan.method is None:
            report.status = "skipped" if options.method == "none" else "pending"
            report.reason = plan.reason
            await journal.record("rewrite", "pending", detail=report.as_dict())
            return report
        await journal.record("rewrite", "started", detail={"method": plan.method})
        wait = float(getattr(settings, "rewrite_wait_seconds", 60.0))
        old = await wait_for_horizon(conn, wait, say)
        if old is not None:
            report.reason = f"waited {wait:g} s for {old}"
            await journal.record("rewrite", "pending", detail=report.as_dict())
            return report
        started = time.perf_counter()
        report.method = plan.method
        if plan.method == "repack":
            assert client is not None
            ok, why = await _repack(engine, ctx, client, spec.sql_table, wait)
        else:
            assert options.budget is not None
            ok, why = await _vacuum_full(ctx, spec.sql_table, options.budget, report)
        report.seconds = time.perf_counter() - started
        if ok:
            report.status = "done"
            report.size_after = await _total_size(conn, spec.sql_table)
        report.reason = why
        await journal.record("rewrite", report.status, detail=report.as_dict())
        return report


async def _total_size(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval("SELECT pg_total_relation_size(to_regclass($1))", table))


async def _vacuum_full(
    ctx: ddl.DdlContext, table: str, budget: float, report: RewriteReport
) -> tuple[bool, str]:
    try:
        report.lock_seconds = await ctx.outside_transaction(
            "VACUUM FULL", table, "ACCESS EXCLUSIVE", f"VACUUM (FULL) {table}", int(budget * 1000)
        )
    except asyncpg.exceptions.QueryCanceledError:
        return False, f"VACUUM FULL ran past the budget of {budget:g} s and was cancelled"
    return True, ""
