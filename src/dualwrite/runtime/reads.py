"""The statements of a read, and prepared reads: drawn once with bind parameters, run per
request with their values.

:func:`read_statement` draws every read of :class:`~dualwrite.runtime.table.EncryptedTable`
over the columns a phase selects; with ``order_by`` and ``limit`` it picks the keys first::

    SELECT <phase columns> FROM t WHERE key IN (
        SELECT key FROM t WHERE <where> ORDER BY <order_by> LIMIT <limit>)
    ORDER BY <order_by>

Same rows as ``... WHERE <where> ORDER BY <order_by> LIMIT <limit>``, but PostgreSQL sorts
narrow key tuples and reads the selected columns of ``limit`` rows only, instead of carrying
every matching row's plaintext *and* ciphertext through the top-N sort (from ``backfill`` to
``contract`` a full read selects both, twice the width of a ``plaintext`` read).

SQLAlchemy caches a statement's compiled SQL, but it must still build the statement object and
walk it for its cache key on every execution -- and a phase that reads ciphertext selects more
elements (each field's ``CASE WHEN <ct> IS NULL THEN <pt> END`` fallback, see
:meth:`~dualwrite.runtime.table.EncryptedTable.narrow_columns`), so the walk costs the encrypted
read more than the plaintext one. A :class:`PreparedRead` builds each phase's statement once;
SQLAlchemy memoizes the cache key on the statement object, so a request pays for neither::

    get_client = enc.prepare(enc.c.id == bindparam("id"), enc.c.workspace_id == bindparam("ws"))
    rows = await get_client.fetch(conn, snap.behaviour, id=client_id, ws=workspace)

    page = enc.prepare(enc.c.workspace_id == bindparam("ws"), order_by=enc.c.id,
                       limit=bindparam("limit", type_=Integer))

The statements are those of :meth:`EncryptedTable.fetch` with the same arguments (the same
columns per phase, the same key-first page for ``order_by`` + ``limit``); one is kept per phase
behaviour a request ran under (a handful: the phase's, and its ``without_plaintext_columns``
variant). The bind parameter values are the only thing a request supplies, so a prepared read
is also the safe way to run a read whose values come from a request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from dualwrite.phases import Behaviour

__all__ = ["PreparedRead", "StatementOf", "read_statement"]

StatementOf = Callable[[Sequence[ColumnElement[Any]]], Any]
"""Draws a read's statement over the given columns (the phase's full set, or the narrow one)."""


def read_statement(
    key: ColumnElement[Any],
    cols: Sequence[ColumnElement[Any]],
    where: Sequence[Any],
    order_by: Any = None,
    limit: Any = None,
) -> Any:
    """``SELECT <cols> WHERE <where>`` (ordered, limited), keys first for a page (see the
    module docstring); ``key`` is the table's primary key column."""
    if order_by is not None and limit is not None:
        keys = select(key).where(*where).order_by(order_by).limit(limit).correlate(None)
        return select(*cols).where(key.in_(keys)).order_by(order_by)
    stmt = select(*cols).where(*where)
    if order_by is not None:
        stmt = stmt.order_by(order_by)
    return stmt if limit is None else stmt.limit(limit)


class _Table(Protocol):
    """What a prepared read needs of its :class:`~dualwrite.runtime.table.EncryptedTable`."""

    def columns_for(self, behaviour: Behaviour) -> tuple[tuple[Any, ...], tuple[str, ...]]: ...

    def narrow_columns(self, behaviour: Behaviour) -> tuple[Any, tuple[Any, ...], Any]: ...

    async def run_read(
        self, conn: AsyncConnection, b: Behaviour, read: PreparedRead, params: Any
    ) -> list[dict[str, Any]]: ...


class PreparedRead:
    """One read of an :class:`~dualwrite.runtime.table.EncryptedTable`, its statements built
    once per phase behaviour (see the module docstring); made by
    :meth:`EncryptedTable.prepare`."""

    def __init__(self, table: _Table, statement_of: StatementOf) -> None:
        self.table = table
        self._statement_of = statement_of
        self._full: dict[Behaviour, Any] = {}
        self._narrow: dict[Behaviour, Any] = {}

    def statement(self, behaviour: Behaviour) -> Any:
        """The statement selecting the phase's full column set (what :meth:`fetch_rows` runs,
        and :meth:`EncryptedTable.decode_rows` decodes)."""
        found = self._full.get(behaviour)
        if found is None:
            found = self._statement_of(self.table.columns_for(behaviour)[0])
            self._full[behaviour] = found
        return found

    def narrow_statement(self, behaviour: Behaviour) -> Any:
        """The statement over :meth:`EncryptedTable.narrow_columns` (a read not sampled for the
        shadow compare)."""
        found = self._narrow.get(behaviour)
        if found is None:
            found = self._statement_of(self.table.narrow_columns(behaviour)[1])
            self._narrow[behaviour] = found
        return found

    async def fetch_rows(
        self, conn: AsyncConnection, behaviour: Behaviour, **params: Any
    ) -> Sequence[Row[Any]]:
        """The matching rows, undecoded (:meth:`EncryptedTable.decode_rows` decodes them)."""
        return (await conn.execute(self.statement(behaviour), params)).all()

    async def fetch(
        self, conn: AsyncConnection, behaviour: Behaviour, **params: Any
    ) -> list[dict[str, Any]]:
        """The matching rows, decoded, as :meth:`EncryptedTable.fetch` returns them."""
        return await self.table.run_read(conn, behaviour, self, params)
