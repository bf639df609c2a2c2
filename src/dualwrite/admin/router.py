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

Layout: :mod:`~dualwrite.admin.context` (what the routes need), :mod:`~dualwrite.admin.route`
(authentication, body limit, error mapping for every route), :mod:`~dualwrite.admin.handlers`
(one function per route), :mod:`~dualwrite.admin.models` (bodies), :mod:`~dualwrite.admin.errors`
(failure -> status).

Audit: phase changes follow :mod:`dualwrite.control.transitions` (applied and guard-refused
changes get a row; requests rejected before the guards run do not). Backfill knob changes
(pause, resume, patch) go through :mod:`dualwrite.control.knobs` and write a row with
``action='backfill_control'``; gate results are their own record (``dualwrite_gate_results``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPBearer

from dualwrite.admin import handlers
from dualwrite.admin.context import AdminContext, context_of
from dualwrite.admin.models import (
    ERROR_RESPONSES,
    BackfillKnobs,
    BackfillPause,
    GateResult,
    PhaseChange,
)
from dualwrite.admin.route import admin_route_class

__all__ = ["admin_router"]


def admin_router(context: AdminContext | None = None) -> APIRouter:
    """An ``APIRouter`` with every ``/admin`` route (see the module docstring for the contract).

    ``context`` defaults to ``request.app.state.dualwrite_admin`` looked up per request.
    """
    bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKEN", scheme_name="AdminToken")
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        route_class=admin_route_class(context),
        dependencies=[Depends(bearer)],  # documents the scheme; the route class enforces it first
        responses=ERROR_RESPONSES,
    )

    def ctx(request: Request) -> AdminContext:
        found = context_of(request, context)
        assert found is not None  # the route class answered 503 otherwise
        return found

    @router.get("/migrations", summary="Every migration: phase, version, behaviour")
    async def list_migrations(request: Request) -> dict[str, Any]:
        return await handlers.list_migrations(ctx(request))

    @router.get(
        "/migrations/{name}",
        summary="One migration: phase, behaviour, coverage, backfill, results, fleet, next moves",
    )
    async def get_migration(name: str, request: Request) -> dict[str, Any]:
        return await handlers.get_migration(ctx(request), name)

    @router.post(
        "/migrations/{name}/phase",
        summary="Move one phase forward or back (guarded, compare-and-swap, audited)",
    )
    async def set_phase(name: str, body: PhaseChange, request: Request) -> dict[str, Any]:
        return await handlers.set_phase(ctx(request), name, body)

    @router.post("/migrations/{name}/backfill/pause", summary="Pause the backfill (next batch)")
    async def pause(
        name: str, request: Request, body: BackfillPause | None = None
    ) -> dict[str, Any]:
        return await handlers.pause_backfill(ctx(request), name, body.reason if body else None)

    @router.post("/migrations/{name}/backfill/resume", summary="Resume a paused backfill")
    async def resume(
        name: str, request: Request, body: BackfillPause | None = None
    ) -> dict[str, Any]:
        return await handlers.resume_backfill(ctx(request), name, body.reason if body else None)

    @router.patch(
        "/migrations/{name}/backfill",
        summary="Change backfill knobs while it runs (batch_size, max_rows_per_second, ...)",
    )
    async def knobs(name: str, body: BackfillKnobs, request: Request) -> dict[str, Any]:
        return await handlers.change_backfill_knobs(ctx(request), name, body)

    @router.post("/migrations/{name}/gate", status_code=201, summary="Record a latency-gate result")
    async def gate(name: str, body: GateResult, request: Request) -> dict[str, Any]:
        return await handlers.record_gate(ctx(request), name, body)

    @router.get("/audit", summary="Audit records, newest first")
    async def audit(
        request: Request,
        migration: str | None = Query(default=None, max_length=200),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        return await handlers.list_audit_records(ctx(request), migration, limit)

    return router
