"""Clients data access: every operation is one statement through `EncryptedTable`.

Each call takes the phase :class:`~dualwrite.phases.Behaviour` observed when the request started,
so one request never mixes two phases. Choices:

* a soft-deleted client (``is_active = false``) is invisible: single reads, updates, lists and
  searches see active clients only; a second ``DELETE`` answers 404;
* workspaces have no table of their own: a workspace exists once it holds a client, so a list
  or search in a workspace without any client row answers 404 (checked only when the result
  is empty, so normal requests stay one query);
* a list or search that hits a value that does not decrypt fails as a whole (HTTP 500): a
  partial page would silently hide a client;
* a write whose phase snapshot fell behind the state row (a move committed since the request
  began) fences itself (:class:`~dualwrite.errors.FencedError`, nothing written) and runs once
  more under a fresh snapshot (``renew``: refresh the watcher, take a new one; up to 3 times), so
  a phase move fails no request; a refusal for any other reason answers 503;
* finalizing drops the plaintext columns while instances still run ``contract``: an operation
  that fails on the missing columns is retried once without them
  (:func:`dualwrite.runtime.table.plaintext_columns_dropped`) and ``on_columns_dropped`` is called
  (the
  app asks its watcher to refresh), so finalizing fails no request.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Integer, bindparam, exists, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.errors import FencedError
from dualwrite.phases import Behaviour
from dualwrite.runtime.reads import PreparedRead
from dualwrite.runtime.table import (
    EncryptedTable,
    plaintext_columns_dropped,
    without_plaintext_columns,
)

T = TypeVar("T")
_RENEWALS = 3  # fresh snapshots a write may take when moves keep landing under it


class ClientsRepository:
    """Create, read, list, search, update and soft-delete clients of one workspace at a time."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: EncryptedTable,
        on_columns_dropped: Callable[[], None] | None = None,
        renew: Callable[[], AbstractAsyncContextManager[Behaviour]] | None = None,
    ) -> None:
        self.engine = engine
        self.table = table
        self.on_columns_dropped = on_columns_dropped
        self.renew = renew
        c = table.c
        self._ws, self._id, self._active = c.workspace_id, c.id, c.is_active
        # the per-request reads, drawn once (dualwrite.runtime.reads): a request binds values
        ws, limit = c.workspace_id == bindparam("ws"), bindparam("limit", type_=Integer)
        self._get = table.prepare(c.id == bindparam("id"), ws, c.is_active)
        self._first_page = table.prepare(ws, c.is_active, order_by=c.id, limit=limit)
        after = c.id > bindparam("after")
        self._next_page = table.prepare(ws, c.is_active, after, order_by=c.id, limit=limit)
        self._all_active = table.prepare(ws, c.is_active, order_by=c.id)

    async def _run(self, behaviour: Behaviour, op: Callable[[Behaviour], Awaitable[T]]) -> T:
        """``op(behaviour)``; a write that fenced itself because only its snapshot was behind
        runs again under a fresh one (``renew``, up to 3 times)."""
        try:
            return await self._run_once(behaviour, op)
        except FencedError as exc:
            if not exc.stale or self.renew is None:
                raise
            last = exc
        for _ in range(_RENEWALS):
            async with self.renew() as fresh:
                try:
                    return await self._run_once(fresh, op)
                except FencedError as exc:
                    if not exc.stale:
                        raise
                    last = exc
        raise last  # moves kept landing under it: 503

    async def _run_once(self, behaviour: Behaviour, op: Callable[[Behaviour], Awaitable[T]]) -> T:
        """``op(behaviour)``, retried once without plaintext columns if they were just dropped."""
        try:
            return await op(behaviour)
        except DBAPIError as exc:
            if not plaintext_columns_dropped(behaviour, exc):
                raise
        if self.on_columns_dropped is not None:
            self.on_columns_dropped()
        return await op(without_plaintext_columns(behaviour))

    async def create(
        self, behaviour: Behaviour, workspace: uuid.UUID, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """Insert a client; its id is generated here, before the insert (it is the row key
        the ciphertexts are bound to)."""
        now = datetime.now(UTC)
        values = {
            **fields,
            "id": uuid.uuid4(),
            "workspace_id": workspace,
            "is_active": True,
            "created_at": now,
            "updated_at": now,
        }

        async def op(b: Behaviour) -> dict[str, Any]:
            async with self.engine.begin() as conn:
                return await self.table.insert(conn, b, values)

        return await self._run(behaviour, op)

    async def get(
        self, behaviour: Behaviour, workspace: uuid.UUID, client: uuid.UUID
    ) -> dict[str, Any] | None:
        rows = await self._run(
            behaviour, lambda b: self._read(b, self._get, id=client, ws=workspace)
        )
        return rows[0] if rows else None

    async def _read(self, b: Behaviour, read: PreparedRead, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return await read.fetch(conn, b, **params)

    async def page(
        self, behaviour: Behaviour, workspace: uuid.UUID, limit: int, after: uuid.UUID | None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` active clients with ``id > after``, by id (keyset pagination)."""
        if after is None:
            return await self._run(
                behaviour, lambda b: self._read(b, self._first_page, ws=workspace, limit=limit)
            )
        return await self._run(
            behaviour,
            lambda b: self._read(b, self._next_page, ws=workspace, limit=limit, after=after),
        )

    async def search_exact(
        self, behaviour: Behaviour, workspace: uuid.UUID, field: str, value: str, limit: int
    ) -> list[dict[str, Any]]:
        """Clients whose ``field`` (email or phone) equals ``value`` after normalisation."""

        def op(b: Behaviour) -> Awaitable[list[dict[str, Any]]]:
            clause = self.table.search_clause(b, field, value)
            where = (self._ws == workspace, self._active, clause)
            # the clause carries the value, so this read is drawn per request
            return self._read(b, self.table.prepare(*where, order_by=self._id))

        rows = await self._run(behaviour, op)
        return [r for r in rows if self.table.matches(field, r[field], value)][:limit]

    async def search_name(
        self, behaviour: Behaviour, workspace: uuid.UUID, needle: str, limit: int
    ) -> list[dict[str, Any]]:
        """Clients whose ``first_name last_name`` contains ``needle`` (case-insensitive).

        Names are encrypted, so this reads the workspace's active clients (one query), decodes
        their names only, filters here, and decodes the matches fully.
        """
        wanted = " ".join(needle.casefold().split())

        async def op(b: Behaviour) -> tuple[Behaviour, Sequence[Any]]:
            async with self.engine.connect() as conn:
                return b, await self._all_active.fetch_rows(conn, b, ws=workspace)

        behaviour, rows = await self._run(behaviour, op)
        names = self.table.decode_rows(behaviour, rows, ("first_name", "last_name"))
        hits = []
        for row, r in zip(rows, names, strict=True):
            full = " ".join(f"{r['first_name'] or ''} {r['last_name'] or ''}".casefold().split())
            if wanted in full:
                hits.append(row)
                if len(hits) >= limit:
                    break
        return self.table.decode_rows(behaviour, hits)

    async def update(
        self, behaviour: Behaviour, workspace: uuid.UUID, client: uuid.UUID, changes: dict[str, Any]
    ) -> dict[str, Any] | None:

        async def op(b: Behaviour) -> dict[str, Any] | None:
            async with self.engine.begin() as conn:
                where = (self._ws == workspace, self._active)
                return await self.table.update(conn, b, client, changes, *where)

        return await self._run(behaviour, op)

    async def deactivate(self, workspace: uuid.UUID, client: uuid.UUID) -> bool:
        """Soft delete: ``is_active = false`` (no encrypted field is touched). ``False`` if no
        active client matched."""
        stmt = (
            update(self.table.table)
            .where(self._id == client, self._ws == workspace, self._active)
            .values(is_active=False, updated_at=func.now())
            .returning(self._id)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def workspace_exists(self, workspace: uuid.UUID) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(select(exists().where(self._ws == workspace)))
            return bool(found.scalar())
