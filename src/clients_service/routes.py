"""The clients routes (``/workspaces/{ws}/clients...``), all behind the optional API token.

Each handler takes ONE phase snapshot (``watcher.behaviour``) at its start and uses it for its
one statement, so a phase change mid-request can never mix two phases in one write.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status

from clients_service.models import (
    LIMITS,
    Client,
    ClientCreate,
    ClientPage,
    ClientPatch,
    SearchResult,
)
from clients_service.repository import ClientsRepository
from dualwrite.config import Settings
from dualwrite.phases import Behaviour
from dualwrite.runtime.watcher import PhaseWatcher


@dataclass(slots=True)
class Services:
    """What the routes need, built by the app's lifespan (``app.state.services``)."""

    settings: Settings
    watcher: PhaseWatcher
    repository: ClientsRepository
    migration: str

    def behaviour(self) -> Behaviour:
        return self.watcher.behaviour(self.migration)


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def require_token(request: Request) -> None:
    """When ``API_TOKEN`` is set, require ``Authorization: Bearer <token>`` (constant time)."""
    expected = request.app.state.api_token
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API token (send Authorization: Bearer <API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


router = APIRouter(
    prefix="/workspaces/{workspace_id}/clients", dependencies=[Depends(require_token)]
)
Svc = Annotated[Services, Depends(services)]
_NOT_FOUND = "no such client in this workspace"


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Client)
async def create_client(workspace_id: uuid.UUID, body: ClientCreate, svc: Svc) -> Any:
    """Create a client; answers 201 with the client (its new ``id`` included)."""
    return await svc.repository.create(svc.behaviour(), workspace_id, body.model_dump())


@router.get("", response_model=ClientPage)
async def list_clients(
    workspace_id: uuid.UUID,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: uuid.UUID | None = None,
) -> Any:
    """Active clients ordered by id; ``after`` is the last id of the previous page."""
    items = await svc.repository.page(svc.behaviour(), workspace_id, limit, after)
    if not items and after is None and not await svc.repository.workspace_exists(workspace_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such workspace")
    next_after = items[-1]["id"] if len(items) == limit else None
    return {"items": items, "next_after": next_after}


@router.get("/search", response_model=SearchResult)
async def search_clients(
    workspace_id: uuid.UUID,
    svc: Svc,
    email: Annotated[str | None, Query(max_length=LIMITS["email"])] = None,
    phone: Annotated[str | None, Query(max_length=LIMITS["phone"])] = None,
    name: Annotated[str | None, Query(max_length=LIMITS["first_name"])] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Any:
    """Exactly one of ``email``/``phone`` (exact after normalisation) or ``name``
    (case-insensitive substring of "first last")."""
    given = {k: v for k, v in (("email", email), ("phone", phone), ("name", name)) if v is not None}
    if len(given) != 1:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "give exactly one of email, phone or name")
    ((field, value),) = given.items()
    if (
        not value.strip()
        or "\x00" in value
        or (field == "phone" and not any(c.isdigit() for c in value))
    ):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"search {field} must not be empty")
    b, repo = svc.behaviour(), svc.repository
    if field == "name":
        items = await repo.search_name(b, workspace_id, value, limit)
    else:
        items = await repo.search_exact(b, workspace_id, field, value, limit)
    if not items and not await repo.workspace_exists(workspace_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such workspace")
    return {"items": items}


@router.get("/{client_id}", response_model=Client)
async def get_client(workspace_id: uuid.UUID, client_id: uuid.UUID, svc: Svc) -> Any:
    found = await svc.repository.get(svc.behaviour(), workspace_id, client_id)
    if found is None:
        raise _not_found()
    return found


@router.patch("/{client_id}", response_model=Client)
async def update_client(
    workspace_id: uuid.UUID, client_id: uuid.UUID, body: ClientPatch, svc: Svc
) -> Any:
    """Change the fields given (only those are re-encrypted); ``null`` clears a field."""
    found = await svc.repository.update(svc.behaviour(), workspace_id, client_id, body.changes())
    if found is None:
        raise _not_found()
    return found


@router.delete("/{client_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_client(workspace_id: uuid.UUID, client_id: uuid.UUID, svc: Svc) -> Response:
    """Soft delete (``is_active = false``); the client then answers 404 everywhere."""
    if not await svc.repository.deactivate(workspace_id, client_id):
        raise _not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
