"""The admin API: a FastAPI router for phase control, status, backfill knobs, gates and audit.

Mount it in any FastAPI app and hand it an :class:`AdminContext`, either directly or through
``app.state.dualwrite_admin`` (useful when the engine is built in the app's lifespan):

>>> app = FastAPI()                                                            # doctest: +SKIP
>>> app.include_router(admin_router())                                         # doctest: +SKIP
>>> # in the lifespan, once the engine, keyring and watcher exist:
>>> app.state.dualwrite_admin = AdminContext(engine, settings, keyring_current="v2",
...                                          watcher=watcher)                   # doctest: +SKIP

Authentication: ``Authorization: Bearer <ADMIN_TOKEN>``, compared with
:func:`hmac.compare_digest`. Without a token or with a wrong one: **401** (with
``WWW-Authenticate: Bearer``). When ``ADMIN_TOKEN`` is not configured every admin route answers
**503** ("admin API disabled") — the routes are never open. Authentication is checked before the
body is read or parsed.

Status codes (every error body is one line: ``{"detail": "..."}``):

=====  ==========================================================================================
200    success (201 for a recorded gate result)
400    malformed JSON, unknown phase, illegal move (skipping a phase: it can never succeed as
       asked, so 400 rather than 409), ``force`` without a reason, empty knob patch
401    missing or wrong bearer token
404    unknown migration
409    guards refuse the move — ``{"detail": ..., "failures": [{"guard", "reason"}, ...]}`` lists
       every failing guard — or a concurrent change won the compare-and-swap (or
       ``expected_version`` is stale, or the migration is already in the target phase)
413    body larger than 64 KiB (:data:`ADMIN_MAX_BODY_BYTES`)
422    well-formed JSON of the wrong shape (missing field, out-of-range knob, unknown key)
503    ``ADMIN_TOKEN`` unset, no :class:`AdminContext`, or the database is unreachable
=====  ==========================================================================================

Request bodies and the failure-to-status mapping live in :mod:`dualwrite.admin_models` (the
model names are re-exported here).

Audit: phase changes follow :mod:`dualwrite.transitions` (applied and guard-refused changes get
a row; requests rejected before the guards run do not). Backfill knob changes (pause, resume,
patch) write a row with ``action='backfill_control'``; gate results are their own record
(``dualwrite_gate_results``).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from alembic.config import Config
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite import store
from dualwrite.admin_models import (
    ERROR_RESPONSES,
    AdminRequestError,
    BackfillKnobs,
    BackfillPause,
    ErrorBody,
    GateResult,
    GuardFailure,
    PhaseChange,
    dualwrite_error_response,
    error_response,
    validation_error_response,
)
from dualwrite.config import Settings
from dualwrite.errors import DualwriteError
from dualwrite.phases import Phase
from dualwrite.propagation import PhaseWatcher
from dualwrite.report import migration_report, state_summary
from dualwrite.transitions import change_phase

__all__ = [
    "ADMIN_MAX_BODY_BYTES",
    "STATE_ATTRIBUTE",
    "AdminContext",
    "AdminRequestError",
    "BackfillKnobs",
    "BackfillPause",
    "ErrorBody",
    "GateResult",
    "GuardFailure",
    "PhaseChange",
    "admin_router",
]

log = logging.getLogger("dualwrite.admin")

ADMIN_MAX_BODY_BYTES = 64 * 1024
"""Admin request bodies are small; anything larger is refused with 413 before parsing."""

STATE_ATTRIBUTE = "dualwrite_admin"
"""``app.state.<this>`` holds the :class:`AdminContext` when none is given to the router."""


@dataclass
class AdminContext:
    """What the admin routes need from the hosting app.

    ``keyring_current`` is the key version the fleet must hold before ``dual_write``;
    ``watcher`` (optional) is refreshed after a change so this instance sees it at once;
    ``alembic_cfg`` (optional) locates the contract revision (default ``./alembic.ini``).
    """

    engine: AsyncEngine
    settings: Settings
    keyring_current: str | None
    watcher: PhaseWatcher | None = None
    alembic_cfg: Config | None = None
    actor_prefix: str = "admin-api"


def _bearer_ok(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


async def _read_limited_body(request: Request) -> bytes | None:
    """The body, or ``None`` when it exceeds :data:`ADMIN_MAX_BODY_BYTES` (cached for FastAPI)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > ADMIN_MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > ADMIN_MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: FastAPI's body parsing reads it from here
    return body


# --- the router -------------------------------------------------------------------------------


def admin_router(context: AdminContext | None = None) -> APIRouter:
    """An ``APIRouter`` with every ``/admin`` route (see the module docstring for the contract).

    ``context`` defaults to ``request.app.state.dualwrite_admin`` looked up per request.
    """

    def resolve(request: Request) -> AdminContext | None:
        return context or getattr(request.app.state, STATE_ATTRIBUTE, None)

    class AdminRoute(APIRoute):
        """Authenticates first, bounds the body, and turns every failure into one-line JSON."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                ctx = resolve(request)
                if ctx is None:
                    return error_response(503, "admin API not configured (no AdminContext)")
                token = ctx.settings.admin_token
                if token is None or not token.get_secret_value():
                    return error_response(503, "admin API disabled: ADMIN_TOKEN is not set")
                if not _bearer_ok(request, token.get_secret_value()):
                    return error_response(401, "missing or wrong bearer token")
                if request.method in ("POST", "PATCH", "PUT") and (
                    await _read_limited_body(request) is None
                ):
                    return error_response(413, f"body larger than {ADMIN_MAX_BODY_BYTES} bytes")
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return validation_error_response(exc)
                except DualwriteError as exc:
                    return dualwrite_error_response(exc)
                except (DBAPIError, InterfaceError, OSError) as exc:
                    log.warning(
                        "admin %s %s: database error %s",
                        request.method,
                        self.path,
                        type(exc).__name__,
                    )
                    return error_response(503, f"database unavailable ({type(exc).__name__})")

            return guarded

    bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKEN", scheme_name="AdminToken")
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        route_class=AdminRoute,
        dependencies=[Depends(bearer)],  # documents the scheme; AdminRoute enforces it first
        responses=ERROR_RESPONSES,
    )

    def ctx_of(request: Request) -> AdminContext:
        ctx = resolve(request)
        assert ctx is not None  # AdminRoute answered 503 otherwise
        return ctx

    async def refresh_watcher(ctx: AdminContext) -> None:
        if ctx.watcher is not None:
            try:
                await ctx.watcher.refresh()
            except Exception as exc:  # the change is committed; polling will catch up
                log.warning("watcher refresh after an admin change failed: %s", type(exc).__name__)

    @router.get("/migrations", summary="Every migration: phase, version, behaviour")
    async def list_migrations(request: Request) -> dict[str, Any]:
        ctx = ctx_of(request)
        async with ctx.engine.connect() as conn:
            states = await store.list_migrations(conn)
        return {"migrations": [state_summary(s) for s in states]}

    @router.get(
        "/migrations/{name}",
        summary="One migration: phase, behaviour, coverage, backfill, results, fleet, next moves",
    )
    async def get_migration(name: str, request: Request) -> dict[str, Any]:
        ctx = ctx_of(request)
        async with ctx.engine.connect() as conn:
            state = await store.get_migration(conn, name)
            return await migration_report(conn, state, ctx.settings, ctx.keyring_current)

    @router.post(
        "/migrations/{name}/phase",
        summary="Move one phase forward or back (guarded, compare-and-swap, audited)",
    )
    async def set_phase(name: str, body: PhaseChange, request: Request) -> dict[str, Any]:
        ctx = ctx_of(request)
        actor = ctx.actor_prefix + (f":{body.actor}" if body.actor else "")
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
        await refresh_watcher(ctx)
        return state_summary(new)

    async def set_control(
        ctx: AdminContext, name: str, patch: dict[str, Any], reason: str | None
    ) -> dict[str, Any]:
        summary = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(patch.items()))
        async with ctx.engine.begin() as conn:
            state = await store.get_migration(conn, name)
            control = await store.update_backfill_control(conn, name, patch)
            await store.record_audit(
                conn,
                store.AuditRecord(
                    migration=name,
                    actor=ctx.actor_prefix,
                    action="backfill_control",
                    from_phase=state.phase.value,
                    to_phase=state.phase.value,
                    reason=summary + (f" ({reason})" if reason else ""),
                    from_version=state.version,
                    to_version=state.version,
                ),
            )
        await refresh_watcher(ctx)
        return {"name": name, "backfill_control": control}

    @router.post("/migrations/{name}/backfill/pause", summary="Pause the backfill (next batch)")
    async def pause(
        name: str, request: Request, body: BackfillPause | None = None
    ) -> dict[str, Any]:
        return await set_control(
            ctx_of(request), name, {"paused": True}, body.reason if body else None
        )

    @router.post("/migrations/{name}/backfill/resume", summary="Resume a paused backfill")
    async def resume(
        name: str, request: Request, body: BackfillPause | None = None
    ) -> dict[str, Any]:
        return await set_control(
            ctx_of(request), name, {"paused": False}, body.reason if body else None
        )

    @router.patch(
        "/migrations/{name}/backfill",
        summary="Change backfill knobs while it runs (batch_size, max_rows_per_second, ...)",
    )
    async def knobs(name: str, body: BackfillKnobs, request: Request) -> dict[str, Any]:
        patch = body.model_dump(exclude_none=True, exclude={"reason"})
        if not patch:
            raise AdminRequestError(
                "nothing to change: give batch_size, max_rows_per_second or sleep_ratio"
            )
        return await set_control(ctx_of(request), name, patch, body.reason)

    @router.post("/migrations/{name}/gate", status_code=201, summary="Record a latency-gate result")
    async def gate(name: str, body: GateResult, request: Request) -> dict[str, Any]:
        ctx = ctx_of(request)
        phase = Phase.parse(body.phase)
        async with ctx.engine.begin() as conn:
            await store.get_migration(conn, name)  # 404 for an unknown migration
            await store.record_gate(conn, name, phase, body.passed, body.summary)
            recorded = await store.latest_gate(conn, name)
        assert recorded is not None
        return {
            "name": name,
            "phase": phase.value,
            "passed": body.passed,
            "finished_at": recorded.finished_at.isoformat(),
        }

    @router.get("/audit", summary="Audit records, newest first")
    async def audit(
        request: Request,
        migration: str | None = Query(default=None, max_length=200),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        ctx = ctx_of(request)
        async with ctx.engine.connect() as conn:
            records = await store.list_audit(conn, migration, limit)
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

    return router
