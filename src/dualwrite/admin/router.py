"""The admin API: a FastAPI router for phase control, status, backfill knobs, gates and audit.

Mount it in any FastAPI app and hand it an :class:`AdminContext`, either directly or through
``app.state.dualwrite_admin`` (useful when the engine is built in the app's lifespan):

>>> app = FastAPI()                                                            # doctest: +SKIP
>>> app.include_router(admin_router())                                         # doctest: +SKIP
>>> # in the lifespan, once the engine, keyring and watcher exist:
>>> app.state.dualwrite_admin = AdminContext(engine, settings, keyring_current="v2",
...                                          watcher=watcher)                   # doctest: +SKIP

Authentication: ``Authorization: Bearer <token>``, one of the configured admin tokens
(:mod:`dualwrite.admin.tokens`: ``ADMIN_TOKENS=name:scope:token,...``, ``ADMIN_TOKENS_FILE``,
``ADMIN_TOKEN``), compared in constant time before the body is read or parsed. ``GET`` routes
need a ``read`` token; every change needs an ``operator`` token. With no token configured every
admin route answers **503** ("admin API disabled") — the routes are never open.

Status codes (every error body is one :class:`~dualwrite.admin.models.ErrorBody` line:
``{"detail": "..."}``; each route documents exactly the statuses it can answer):

=====  ==========================================================================================
200    success (201 for a recorded gate result)
400    malformed JSON
401    missing, wrong or revoked bearer token (with ``WWW-Authenticate: Bearer``)
403    a ``read`` token on a route that changes something
404    unknown migration
409    guards refuse the move — ``{"detail": ..., "failures": [{"guard", "reason"}, ...]}`` lists
       every failing guard — or the move is not one step from the current phase, or a
       concurrent change won the compare-and-swap (or ``expected_version`` is stale, or the
       migration is already in the target phase)
413    body larger than 64 KiB (:data:`ADMIN_MAX_BODY_BYTES`)
422    a parameter or body that does not match the schema (unknown phase, missing field,
       out-of-range or ``null`` knob, empty knob patch, ``force`` without a reason, unknown key)
503    no token configured, no :class:`AdminContext`, or the database is unreachable
=====  ==========================================================================================

The list answers carry OpenAPI links to the item routes (``GET /admin/migrations`` →
``/admin/migrations/{name}`` and its actions), so a client generated from the schema (or a
stateful tester) can walk from one to the other.

Layout: :mod:`~dualwrite.admin.context` (what the routes need), :mod:`~dualwrite.admin.route`
(authentication, body limit, error mapping for every route), :mod:`~dualwrite.admin.handlers`
(one function per route), :mod:`~dualwrite.admin.models` (bodies), :mod:`~dualwrite.admin.fields`
(text rules the schema and the validation share), :mod:`~dualwrite.admin.tokens` (tokens and
scopes), :mod:`~dualwrite.admin.errors` (failure -> status).

Audit: the actor is ``admin-api:<token name>`` (plus ``:<actor>`` when a phase change names
one) — the token's name, never its value. Phase changes follow
:mod:`dualwrite.control.transitions` (applied and guard-refused changes get a row; requests
rejected before the guards run do not). Backfill knob changes
(pause, resume, patch) go through :mod:`dualwrite.control.knobs` and write a row with
``action='backfill_control'``; gate results are their own record (``dualwrite_gate_results``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPBearer

from dualwrite.admin import handlers
from dualwrite.admin.context import AdminContext, actor_of, context_of
from dualwrite.admin.models import (
    AuditPage,
    BackfillKnobs,
    BackfillPause,
    GateRecorded,
    GateResult,
    KnobsState,
    MigrationDetail,
    MigrationList,
    MigrationSummary,
    PhaseChange,
    error_responses,
)
from dualwrite.admin.route import admin_route_class

__all__ = ["MIGRATION_NAME_PATTERN", "admin_router"]

MIGRATION_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,50}$"
"""A migration name (the spec's identifier rule, :mod:`dualwrite.spec`)."""

Name = Annotated[
    str,
    Path(pattern=MIGRATION_NAME_PATTERN, description="migration name", examples=["clients_pii"]),
]

_ITEM_OPERATIONS = {
    "getMigration": "the migration's status",
    "setPhase": "move it one phase",
    "pauseBackfill": "pause its backfill",
    "resumeBackfill": "resume its backfill",
    "changeBackfillKnobs": "change its backfill knobs",
    "recordGate": "record a gate verdict for it",
}


def _links(name_from: str, *, audit: bool = True) -> dict[str, Any]:
    """OpenAPI links from an answer to every item route of the migration it names."""
    links: dict[str, Any] = {
        op: {"operationId": op, "parameters": {"name": name_from}, "description": what}
        for op, what in _ITEM_OPERATIONS.items()
    }
    if audit:
        links["listAudit"] = {
            "operationId": "listAudit",
            "parameters": {"migration": name_from},
            "description": "its audit records",
        }
    return links


def _ok(model: type, links: dict[str, Any], status: int = 200) -> dict[int | str, Any]:
    return {status: {"model": model, "links": links}}


_READ = (401, 500, 503)
_ITEM_READ = (401, 404, 422, 500, 503)
_CHANGE = (400, 401, 403, 404, 413, 422, 500, 503)


def admin_router(context: AdminContext | None = None) -> APIRouter:
    """An ``APIRouter`` with every ``/admin`` route (see the module docstring for the contract).

    ``context`` defaults to ``request.app.state.dualwrite_admin`` looked up per request.
    """
    bearer = HTTPBearer(
        auto_error=False,
        scheme_name="AdminToken",
        description="an admin token: `read` scope for GET routes, `operator` for changes",
    )
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        route_class=admin_route_class(context),
        dependencies=[Depends(bearer)],  # documents the scheme; the route class enforces it first
    )

    def ctx(request: Request) -> AdminContext:
        found = context_of(request, context)
        assert found is not None  # the route class answered 503 otherwise
        return found

    by_name = "$response.body#/migrations/0/name"
    same = "$request.path.name"

    @router.get(
        "/migrations",
        operation_id="listMigrations",
        summary="Every migration: phase, version, behaviour (read scope)",
        response_model=MigrationList,
        responses={**_ok(MigrationList, _links(by_name)), **error_responses(*_READ)},
    )
    async def list_migrations(request: Request) -> Any:
        return await handlers.list_migrations(ctx(request))

    @router.get(
        "/migrations/{name}",
        operation_id="getMigration",
        summary="One migration: phase, behaviour, coverage, backfill, results, fleet, next moves"
        " (read scope)",
        response_model=MigrationDetail,
        responses={**_ok(MigrationDetail, _links(same)), **error_responses(*_ITEM_READ)},
    )
    async def get_migration(name: Name, request: Request) -> Any:
        return await handlers.get_migration(ctx(request), name)

    @router.post(
        "/migrations/{name}/phase",
        operation_id="setPhase",
        summary="Move one phase forward or back (guarded, compare-and-swap, audited; operator)",
        response_model=MigrationSummary,
        responses={**_ok(MigrationSummary, _links(same)), **error_responses(409, *_CHANGE)},
    )
    async def set_phase(name: Name, body: PhaseChange, request: Request) -> Any:
        c = ctx(request)
        return await handlers.set_phase(c, name, body, actor_of(c, request, body.actor))

    @router.post(
        "/migrations/{name}/backfill/pause",
        operation_id="pauseBackfill",
        summary="Pause the backfill at its next batch (operator)",
        response_model=KnobsState,
        responses={**_ok(KnobsState, _links(same)), **error_responses(*_CHANGE)},
    )
    async def pause(name: Name, request: Request, body: BackfillPause | None = None) -> Any:
        c = ctx(request)
        reason = body.reason if body else None
        return await handlers.pause_backfill(c, name, reason, actor_of(c, request))

    @router.post(
        "/migrations/{name}/backfill/resume",
        operation_id="resumeBackfill",
        summary="Resume a paused backfill (operator)",
        response_model=KnobsState,
        responses={**_ok(KnobsState, _links(same)), **error_responses(*_CHANGE)},
    )
    async def resume(name: Name, request: Request, body: BackfillPause | None = None) -> Any:
        c = ctx(request)
        reason = body.reason if body else None
        return await handlers.resume_backfill(c, name, reason, actor_of(c, request))

    @router.patch(
        "/migrations/{name}/backfill",
        operation_id="changeBackfillKnobs",
        summary="Change backfill knobs while it runs (batch_size, max_rows_per_second, "
        "sleep_ratio; operator)",
        response_model=KnobsState,
        responses={**_ok(KnobsState, _links(same)), **error_responses(*_CHANGE)},
    )
    async def knobs(name: Name, body: BackfillKnobs, request: Request) -> Any:
        c = ctx(request)
        return await handlers.change_backfill_knobs(c, name, body, actor_of(c, request))

    @router.post(
        "/migrations/{name}/gate",
        operation_id="recordGate",
        status_code=201,
        summary="Record a latency-gate result (operator)",
        response_model=GateRecorded,
        responses={**_ok(GateRecorded, _links(same), 201), **error_responses(*_CHANGE)},
    )
    async def gate(name: Name, body: GateResult, request: Request) -> Any:
        return await handlers.record_gate(ctx(request), name, body)

    @router.get(
        "/audit",
        operation_id="listAudit",
        summary="Audit records, newest first (read scope)",
        response_model=AuditPage,
        responses=error_responses(401, 422, 500, 503),
    )
    async def audit(
        request: Request,
        migration: Annotated[
            str | None, Query(pattern=MIGRATION_NAME_PATTERN, description="only this migration")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Any:
        return await handlers.list_audit_records(ctx(request), migration, limit)

    return router
