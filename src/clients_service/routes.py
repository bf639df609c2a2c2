"""The clients routes (``/workspaces/{ws}/clients...``), all behind the optional API token.

Each handler takes ONE phase snapshot (``svc.request()``, counted in flight by the watcher until
the handler ends) at its start and uses it for its one statement, so a phase change mid-request
can never mix two phases in one write, and the instance reports a new phase as observed only
once the requests of the old one have finished.

The OpenAPI schema states what the routes do: every status each can answer (errors are one
:class:`~dualwrite.admin.models.ErrorBody` line), the ``ApiToken`` bearer scheme and 401 only
when ``API_TOKEN`` is set, and links from a created, listed or searched client to the routes
that read, change and delete it (:func:`clients_router`).
"""

from __future__ import annotations

import contextlib
import hmac
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.routing import Match
from starlette.types import Scope

from clients_service.models import (
    LIMITS,
    Client,
    ClientCreate,
    ClientPage,
    ClientPatch,
    SearchResult,
)
from clients_service.repository import ClientsRepository
from dualwrite.admin import error_responses
from dualwrite.admin.fields import NOT_BLANK
from dualwrite.config import Settings
from dualwrite.phases import Behaviour
from dualwrite.runtime.watcher import PhaseWatcher

__all__ = ["Services", "clients_router", "require_metrics_token", "require_token"]


@dataclass(slots=True)
class Services:
    """What the routes need, built by the app's lifespan (``app.state.services``)."""

    settings: Settings
    watcher: PhaseWatcher
    repository: ClientsRepository
    migration: str

    def behaviour(self) -> Behaviour:
        return self.watcher.behaviour(self.migration)

    @contextlib.contextmanager
    def request(self) -> Iterator[Behaviour]:
        """One request's phase snapshot, in flight until the block ends."""
        with self.watcher.request(self.migration) as snap:
            yield snap.behaviour


async def services(request: Request) -> Services:
    # the dependencies are ``async def``: none blocks, and a sync one would cost every request
    # a hop to the thread pool and back
    found: Services = request.app.state.services
    return found


def _bearer_matches(request: Request, expected: bytes) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


async def require_token(request: Request) -> None:
    """When ``API_TOKEN`` is set, require ``Authorization: Bearer <token>`` (constant time)."""
    expected = request.app.state.api_token
    if expected is not None and not _bearer_matches(request, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API token (send Authorization: Bearer <API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_metrics_token(request: Request) -> None:
    """When ``METRICS_TOKEN`` is set, ``GET /metrics`` needs ``Authorization: Bearer <it>``;
    unset (the default), the route stays open, as a Prometheus scrape expects."""
    settings: Settings = request.app.state.settings
    if settings.metrics_token is None:
        return
    if not _bearer_matches(request, settings.metrics_token.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong metrics token (send Authorization: Bearer <METRICS_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


Svc = Annotated[Services, Depends(services)]
_NOT_FOUND = "no such client in this workspace"
_WHY = {
    400: "malformed body, or not exactly one search criterion",
    404: "no such client (or workspace) — another workspace's clients are never visible",
    413: "body larger than MAX_BODY_BYTES",
    422: "a parameter or body that does not match the schema",
    500: "internal error: a stored value could not be read (generic message)",
    503: "this instance cannot encrypt now, a write fenced itself (its phase snapshot is stale,"
    " its watcher is cut off, or a live instance lacks its current key), the migration is not"
    " registered, or the database is unreachable; nothing was written",
}
_SEARCH_PATTERNS = {"email": NOT_BLANK, "phone": r"^[^\u0000]*[0-9][^\u0000]*$", "name": NOT_BLANK}
_SEARCH_CRITERIA = {
    "name": "criteria",
    "in": "query",
    "required": True,
    "style": "form",
    "explode": True,
    "description": "exactly one of email, phone (exact after normalisation) or name "
    '(case-insensitive substring of "first last")',
    "schema": {
        "type": "object",
        "properties": {
            field: {
                "type": "string",
                "maxLength": LIMITS[limit],
                "pattern": _SEARCH_PATTERNS[field],
            }
            for field, limit in (("email", "email"), ("phone", "phone"), ("name", "first_name"))
        },
        "minProperties": 1,
        "maxProperties": 1,
    },
}


class _ClientRoute(APIRoute):
    """A ``/{client_id}`` route that does not match ``search``: ``PATCH .../search`` is then a
    405 of the search route (with its ``Allow``), not a malformed client id."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and child.get("path_params", {}).get("client_id") == "search":
            return Match.NONE, {}
        return match, child


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND)


def _client_links(client_id: str) -> dict[str, Any]:
    params = {"workspace_id": "$request.path.workspace_id", "client_id": client_id}
    return {
        op: {"operationId": op, "parameters": params, "description": what}
        for op, what in (
            ("getClient", "read this client"),
            ("updateClient", "change this client"),
            ("deleteClient", "delete this client"),
        )
    }


async def create_client(workspace_id: uuid.UUID, body: ClientCreate, svc: Svc) -> Any:
    """Create a client; answers 201 with the client (its new ``id`` included)."""
    with svc.request() as b:
        return await svc.repository.create(b, workspace_id, body.model_dump())


async def list_clients(
    workspace_id: uuid.UUID,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: uuid.UUID | None = None,
) -> Any:
    """Active clients ordered by id; ``after`` is the last id of the previous page."""
    with svc.request() as b:
        items = await svc.repository.page(b, workspace_id, limit, after)
    if not items and after is None and not await svc.repository.workspace_exists(workspace_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such workspace")
    next_after = items[-1]["id"] if len(items) == limit else None
    return {"items": items, "next_after": next_after}


def _hidden(limit: int) -> Any:
    return Query(max_length=limit, include_in_schema=False)  # documented as ``criteria``


async def search_clients(
    workspace_id: uuid.UUID,
    svc: Svc,
    email: Annotated[str | None, _hidden(LIMITS["email"])] = None,
    phone: Annotated[str | None, _hidden(LIMITS["phone"])] = None,
    name: Annotated[str | None, _hidden(LIMITS["first_name"])] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Any:
    """Exactly one of ``email``/``phone`` (exact after normalisation) or ``name``
    (case-insensitive substring of "first last")."""
    given = {k: v for k, v in (("email", email), ("phone", phone), ("name", name)) if v is not None}
    if len(given) != 1:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "give exactly one of email, phone or name")
    ((field, value),) = given.items()
    if not re.fullmatch(_SEARCH_PATTERNS[field], value):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"search {field} must not be empty")
    repo = svc.repository
    with svc.request() as b:
        if field == "name":
            items = await repo.search_name(b, workspace_id, value, limit)
        else:
            items = await repo.search_exact(b, workspace_id, field, value, limit)
    if not items and not await repo.workspace_exists(workspace_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such workspace")
    return {"items": items}


async def get_client(workspace_id: uuid.UUID, client_id: uuid.UUID, svc: Svc) -> Any:
    with svc.request() as b:
        found = await svc.repository.get(b, workspace_id, client_id)
    if found is None:
        raise _not_found()
    return found


async def update_client(
    workspace_id: uuid.UUID, client_id: uuid.UUID, body: ClientPatch, svc: Svc
) -> Any:
    """Change the fields given (only those are re-encrypted); ``null`` clears a field."""
    with svc.request() as b:
        found = await svc.repository.update(b, workspace_id, client_id, body.changes())
    if found is None:
        raise _not_found()
    return found


async def delete_client(workspace_id: uuid.UUID, client_id: uuid.UUID, svc: Svc) -> Response:
    """Soft delete (``is_active = false``); the client then answers 404 everywhere."""
    if not await svc.repository.deactivate(workspace_id, client_id):
        raise _not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def clients_router(*, token_required: bool) -> APIRouter:
    """The clients routes; ``token_required`` (``API_TOKEN`` set) adds the ``ApiToken`` scheme
    and 401 to the schema."""
    dependencies = [Depends(require_token)]
    if token_required:  # documents the scheme; require_token enforces it
        scheme = HTTPBearer(auto_error=False, scheme_name="ApiToken", description="API_TOKEN")
        dependencies.insert(0, Depends(scheme))
    router = APIRouter(prefix="/workspaces/{workspace_id}/clients", dependencies=dependencies)
    auth = (401,) if token_required else ()

    def errors(*codes: int) -> dict[int | str, Any]:
        return error_responses(*sorted({*codes, *auth, 422, 500, 503}), why=_WHY)

    first = "$response.body#/items/0/id"
    routes: list[tuple[str, str, Any, str, int, Any, dict[int | str, Any]]] = [
        ("", "POST", create_client, "createClient", 201, Client,
         {201: {"links": _client_links("$response.body#/id")}, **errors(400, 413)}),
        ("", "GET", list_clients, "listClients", 200, ClientPage,
         {200: {"links": _client_links(first)}, **errors(404)}),
        ("/search", "GET", search_clients, "searchClients", 200, SearchResult,
         {200: {"links": _client_links(first)}, **errors(400, 404)}),
        ("/{client_id}", "GET", get_client, "getClient", 200, Client,
         {200: {"links": _client_links("$request.path.client_id")}, **errors(404)}),
        ("/{client_id}", "PATCH", update_client, "updateClient", 200, Client,
         {200: {"links": _client_links("$request.path.client_id")}, **errors(400, 404, 413)}),
        ("/{client_id}", "DELETE", delete_client, "deleteClient", 204, None, errors(404)),
    ]  # fmt: skip
    for path, method, endpoint, op, code, model, responses in routes:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            operation_id=op,
            status_code=code,
            response_model=model,
            responses=responses,
            openapi_extra={"parameters": [_SEARCH_CRITERIA]} if op == "searchClients" else None,
            route_class_override=_ClientRoute if "{client_id}" in path else None,
        )
    return router
