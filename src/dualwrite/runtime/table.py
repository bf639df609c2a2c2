"""SQLAlchemy integration: declare a table once, read and write it the way the phase says.

The application declares its table with its plain attribute names (a Core ``Table`` or a
declarative model's ``__table__``) and a :class:`~dualwrite.spec.MigrationSpec` naming the
encrypted fields. :class:`EncryptedTable` adds the ``<field>_encrypted`` / ``<field>_bidx``
columns itself and builds Core statements for the phase's :class:`~dualwrite.phases.Behaviour`::

    clients = Table("clients", MetaData(), Column("id", Uuid, primary_key=True), ...,
                    Column("first_name", Text), Column("email", Text), ...)
    enc = EncryptedTable(clients, FieldCodec(CLIENTS_PII, cipher, bidx, metrics), fence=watcher)

    with watcher.request("clients_pii") as snap:  # one snapshot per request, counted in flight
        async with engine.begin() as conn:
            b = snap.behaviour
            row = await enc.insert(conn, b, {"id": uuid4(), "workspace_id": ws, "email": "a@b"})
            rows = await enc.fetch(conn, b, enc.c.workspace_id == ws, order_by=enc.c.id)
            row = await enc.update(conn, b, client_id, {"email": None})

Every read is ONE statement whatever the number of rows (no per-row queries); the columns it
selects depend on the phase (no plaintext in ``finalized``, no ciphertext before ``backfill``).
Inserts and updates write plaintext, ciphertext and blind index of a field in the same
statement; an update touches only the fields it is given -- except a primary-key change, which
re-encrypts every field under the new key (a ciphertext is bound to its row's key). Rows come
back as plain dicts keyed by attribute name.

Search on a blind-indexed field (:meth:`EncryptedTable.search_clause`) also finds, by their
plaintext, rows without a blind index while reads may serve plaintext
(:mod:`dualwrite.runtime.search` draws the clause).

Self-fencing: with a ``fence`` (the app's :class:`~dualwrite.runtime.watcher.PhaseWatcher`),
:meth:`EncryptedTable.insert` and :meth:`EncryptedTable.update` first check, in the caller's
transaction, that the snapshot they act under is still current (one ``SELECT`` of the state
row) and that the watcher refreshed within its liveness window; otherwise they raise
:class:`~dualwrite.errors.FencedError` and write nothing (:mod:`dualwrite.runtime.fence`). The
fence also learns that this process serves the migration (it heartbeats it).

Server-generated keys (identity, serial): :meth:`EncryptedTable.insert` without the key runs
``INSERT ... RETURNING <key>`` (plaintext per the phase, no ciphertext) and then, in the same
transaction, an ``UPDATE`` writing the ciphertexts bound to the key the database chose -- a
ciphertext is never computed for a key that is not the row's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    LargeBinary,
    MetaData,
    Row,
    Table,
    case,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnClause

from dualwrite.crypto import row_key_of
from dualwrite.phases import Behaviour, ReadSource
from dualwrite.runtime.codec import FieldCodec, ReadLayout, read_columns
from dualwrite.runtime.fence import WriteFence
from dualwrite.runtime.reads import PreparedRead, read_statement
from dualwrite.runtime.search import matches, search_clause, table_matches, without_ciphertext
from dualwrite.runtime.window import plaintext_columns_dropped, without_plaintext_columns
from dualwrite.schema.sql import added_columns
from dualwrite.spec import MigrationSpec

__all__ = [
    "EncryptedTable",
    "plain_table_of",
    "plaintext_columns_dropped",
    "without_plaintext_columns",
]

_Narrow = tuple[Behaviour, tuple[ColumnElement[Any], ...], tuple[str, ...]]


def plain_table_of(model_or_table: Any) -> Table:
    """The Core ``Table`` of a declarative model class, or the table itself."""
    table = getattr(model_or_table, "__table__", model_or_table)
    if not isinstance(table, Table):
        raise TypeError("expected a SQLAlchemy Table or a declarative model class")
    return table


class EncryptedTable:
    """Phase-aware statements for one table (see the module docstring)."""

    def __init__(
        self,
        model_or_table: Any,
        codec: FieldCodec,
        *,
        updated_at: str | None = "updated_at",
        fence: WriteFence | None = None,
    ) -> None:
        plain = plain_table_of(model_or_table)
        spec = codec.spec
        if not table_matches(plain, spec):
            raise ValueError(f"table {plain.name} is not the table of migration {spec.name}")
        missing = [f for f in spec.field_names if f not in plain.c]
        if missing:
            raise ValueError(f"table {plain.name} does not declare fields {', '.join(missing)}")
        if spec.primary_key not in plain.c:
            raise ValueError(f"table {plain.name} has no primary key column {spec.primary_key}")
        self.spec: MigrationSpec = spec
        self.codec = codec
        self.fence = fence
        if fence is not None:
            fence.serve(spec.name)
        added = [c for f in spec.fields for c in added_columns(f)]
        # a model declared with dualwrite.runtime.orm already carries the added columns
        columns: list[Column[Any]] = [c._copy() for c in plain.columns if c.name not in added]
        columns += [Column(c, LargeBinary) for c in added]
        self.table = Table(plain.name, MetaData(), *columns, schema=plain.schema)
        self.c = self.table.c
        self.key = self.table.c[spec.primary_key]
        self._field_names = frozenset(spec.field_names)
        self._other = tuple(
            c.name for c in plain.columns if c.name not in self._field_names and c.name not in added
        )
        self._key_index = self._other.index(spec.primary_key)
        self._updated_at = updated_at if updated_at and updated_at in plain.c else None
        self._select_cache: dict[
            Behaviour, tuple[tuple[ColumnElement[Any], ...], tuple[str, ...]]
        ] = {}
        self._narrow_cache: dict[Behaviour, _Narrow] = {}

    # --- columns -----------------------------------------------------------------------------

    def columns_for(
        self, behaviour: Behaviour
    ) -> tuple[tuple[ColumnElement[Any], ...], tuple[str, ...]]:
        """The columns a read selects in this phase (non-field columns first) and their names."""
        found = self._select_cache.get(behaviour)
        if found is None:
            names = (*self._other, *read_columns(self.spec, behaviour))
            found = (tuple(self.table.c[n] for n in names), names)
            self._select_cache[behaviour] = found
        return found

    def layout(self, behaviour: Behaviour) -> ReadLayout:
        return self.codec.layout(behaviour, self.columns_for(behaviour)[1])

    def narrow_columns(self, behaviour: Behaviour) -> _Narrow:
        """What a statement NOT drawn for the shadow compare selects (:meth:`fetch`), and the
        behaviour to decode it with (no shadow compare): a phase reading ciphertext takes a
        plaintext only where the ciphertext is missing (``CASE WHEN ct IS NULL THEN pt END``,
        the fallback); a phase reading plaintext takes no ciphertext. Same width as a
        plaintext read, while a sampled statement still selects both sources in full."""
        found = self._narrow_cache.get(behaviour)
        if found is not None:
            return found
        b = dataclasses.replace(behaviour, shadow_compare=False)
        cols, names = self.columns_for(behaviour)
        c, ct_of = self.table.c, {f.plaintext_column: f.ciphertext_column for f in self.spec.fields}
        kept: list[ColumnElement[Any]] = []
        for col, name in zip(cols, names, strict=True):
            if b.reads_from is ReadSource.CIPHERTEXT and name in ct_of:
                kept.append(case((c[ct_of[name]].is_(None), col)).label(name))
            elif b.reads_from is ReadSource.CIPHERTEXT or name not in ct_of.values():
                kept.append(col)
        found = (b, tuple(kept), tuple(k.name for k in kept))
        self._narrow_cache[behaviour] = found
        return found

    # --- rows --------------------------------------------------------------------------------

    def decode_rows(
        self,
        behaviour: Behaviour,
        rows: Sequence[Row[Any]] | Sequence[Sequence[Any]],
        fields: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Plain dicts (attribute -> value) of rows selected with :meth:`columns_for`
        (only ``fields`` of the encrypted fields when given: decode less, filter, then decode
        the survivors fully)."""
        layout = self.layout(behaviour)
        return self.codec.decode_rows(layout, rows, self._other, self._key_index, fields)

    # --- statements ----------------------------------------------------------------------------

    def select(self, behaviour: Behaviour) -> Any:
        """``SELECT <phase columns> FROM table`` to add ``where``/``order_by``/``limit`` to."""
        return select(*self.columns_for(behaviour)[0])

    def insert_params(self, behaviour: Behaviour, values: Mapping[str, Any]) -> dict[str, Any]:
        """Column values of one INSERT: non-field values as given, fields as the phase says.

        ``values`` must contain the primary key (generated before the insert: it is the
        associated-data row key).
        """
        if values.get(self.spec.primary_key) is None:
            raise ValueError(f"insert needs the primary key {self.spec.primary_key} up front")
        row_key = row_key_of(values[self.spec.primary_key])
        params = {k: v for k, v in values.items() if k not in self._field_names}
        params.update(self.codec.write_columns(behaviour, values, row_key))
        return params

    def changes_key(self, key: Any, changes: Mapping[str, Any]) -> bool:
        """Whether ``changes`` moves row ``key`` to another primary key."""
        pk = self.spec.primary_key
        return pk in changes and row_key_of(changes[pk]) != row_key_of(key)

    def update_params(
        self, behaviour: Behaviour, key: Any, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Column values of an UPDATE of row ``key``: only the fields in ``changes`` are
        (re-)encrypted; ``updated_at`` is set to ``now()`` when the table has one.

        A primary-key change binds the ciphertexts to the new key and must carry every field
        (a ciphertext is bound to its row's key; :meth:`update` reads the others first)."""
        row_key = row_key_of(key)
        if self.changes_key(key, changes):
            missing = [f for f in self.spec.field_names if f not in changes]
            if missing:
                raise ValueError(
                    f"a primary key change on {self.spec.table} must rewrite every encrypted "
                    f"field (missing: {', '.join(missing)}): use EncryptedTable.update"
                )
            row_key = row_key_of(changes[self.spec.primary_key])
        params = {k: v for k, v in changes.items() if k not in self._field_names}
        params.update(self.codec.write_columns(behaviour, changes, row_key))
        if self._updated_at and self._updated_at not in params:
            params[self._updated_at] = func.now()
        return params

    # --- one-statement helpers ------------------------------------------------------------------

    async def insert(
        self, conn: AsyncConnection, behaviour: Behaviour, values: Mapping[str, Any]
    ) -> dict[str, Any]:
        """INSERT one row; returns it as a plain dict (server defaults included)."""
        if self.fence is not None:
            await self.fence.fence(conn, self.spec.name, behaviour)
        returning = [self.table.c[n] for n in self._other]
        if values.get(self.spec.primary_key) is None:  # the database picks the key
            row = await self._insert_then_encrypt(conn, behaviour, values, returning)
        else:
            params = self.insert_params(behaviour, values)
            stmt = insert(self.table).values(params).returning(*returning)
            row = (await conn.execute(stmt)).one()
        item = dict(zip(self._other, row, strict=True))
        for name in self.spec.field_names:
            item[name] = values.get(name)
        return item

    async def _insert_then_encrypt(
        self, conn: AsyncConnection, b: Behaviour, values: Mapping[str, Any], returning: Any
    ) -> Row[Any]:
        """``INSERT ... RETURNING`` without ciphertext, then the ciphertext for the key the
        database generated, in the caller's transaction (see the module docstring)."""
        params = {k: v for k, v in values.items() if k not in self._field_names}
        plain = self.codec.write_columns(without_ciphertext(b), values, "0")
        row = (await conn.execute(
            insert(self.table).values({**params, **plain}).returning(*returning)
        )).one()  # fmt: skip
        key = row[self._key_index]
        if b.writes_ciphertext:
            cols = self.codec.write_columns(b, values, row_key_of(key))
            sealed = {c: v for c, v in cols.items() if c not in self._field_names}
            await conn.execute(update(self.table).where(self.key == key).values(sealed))
        return row

    async def update(
        self,
        conn: AsyncConnection,
        behaviour: Behaviour,
        key: Any,
        changes: Mapping[str, Any],
        *where: ColumnElement[bool],
    ) -> dict[str, Any] | None:
        """UPDATE row ``key`` (and ``where``); returns the row after the update, or ``None``
        when no row matched. One statement (``UPDATE ... RETURNING``) after the fence, except
        for a primary-key change: the row is read first (``FOR UPDATE``, in the caller's
        transaction) and every field is re-encrypted under the new key, so no ciphertext stays
        bound to the old one (the guard trigger refuses a key change that would leave one)."""
        if self.fence is not None:
            await self.fence.fence(conn, self.spec.name, behaviour)
        if self.changes_key(key, changes):
            current = await self._current_fields(conn, behaviour, key, where)
            if current is None:
                return None
            changes = {**current, **changes}
        params = self.update_params(behaviour, key, changes)
        stmt = (
            update(self.table)
            .where(self.key == key, *where)
            .values(params)
            .returning(*self.columns_for(behaviour)[0])
        )
        row = (await conn.execute(stmt)).first()
        return None if row is None else self.decode_rows(behaviour, [row])[0]

    async def _current_fields(
        self, conn: AsyncConnection, b: Behaviour, key: Any, where: Sequence[ColumnElement[bool]]
    ) -> dict[str, Any] | None:
        """Every field of row ``key`` as this phase reads it (locked until the caller's
        transaction ends), or ``None`` when no row matches."""
        stmt = self.select(b).where(self.key == key, *where).with_for_update()
        row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        decoded = self.decode_rows(b, [row])[0]
        return {name: decoded[name] for name in self.spec.field_names}

    async def fetch_rows(
        self,
        conn: AsyncConnection,
        behaviour: Behaviour,
        *where: ColumnElement[bool],
        order_by: Any = None,
        limit: int | None = None,
    ) -> Sequence[Row[Any]]:
        """SELECT the rows matching ``where`` in ONE query, undecoded (see :meth:`decode_rows`).

        With ``order_by`` and ``limit`` the statement picks the keys first and reads the wide
        rows by primary key (see :func:`~dualwrite.runtime.reads.read_statement`).
        """
        return await self.prepare(*where, order_by=order_by, limit=limit).fetch_rows(
            conn, behaviour
        )

    def page_statement(
        self, behaviour: Behaviour, *where: ColumnElement[bool], order_by: Any, limit: int
    ) -> Any:
        """One statement for the first ``limit`` rows matching ``where`` by ``order_by``, keys
        first (:func:`~dualwrite.runtime.reads.read_statement`)."""
        return self.prepare(*where, order_by=order_by, limit=limit).statement(behaviour)

    async def fetch(
        self,
        conn: AsyncConnection,
        behaviour: Behaviour,
        *where: ColumnElement[bool],
        order_by: Any = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """SELECT the rows matching ``where`` in ONE query and decode them (a read run per
        request is cheaper prepared once: :meth:`prepare`)."""
        return await self.prepare(*where, order_by=order_by, limit=limit).fetch(conn, behaviour)

    def prepare(
        self, *where: ColumnElement[bool], order_by: Any = None, limit: Any = None
    ) -> PreparedRead:
        """:meth:`fetch`'s read drawn once, its values bind parameters given per call
        (:mod:`dualwrite.runtime.reads`)."""
        return PreparedRead(
            self, lambda cols: read_statement(self.key, cols, where, order_by, limit)
        )

    async def run_read(
        self, conn: AsyncConnection, b: Behaviour, read: PreparedRead, params: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Run ``read`` and decode it: the full column set when it is sampled for the shadow
        compare (or the phase has none), else the narrow one (:meth:`narrow_columns`)."""
        if not b.shadow_compare or self.codec.sample_statement():
            rows = (await conn.execute(read.statement(b), params)).all()
            layout = self.codec.layout(b, self.columns_for(b)[1], sampled=b.shadow_compare)
        else:  # the common case: only what the answer needs
            nb, _, names = self.narrow_columns(b)
            rows = (await conn.execute(read.narrow_statement(b), params)).all()
            layout = self.codec.layout(nb, names)
        return self.codec.decode_rows(layout, rows, self._other, self._key_index)

    # --- search -------------------------------------------------------------------------------

    def bidx_for(self, field: str, value: str | None) -> bytes | None:
        """The blind index of ``value`` for searchable ``field``."""
        return self.codec.bidx_for(field, value)

    def search_clause(self, behaviour: Behaviour, field: str, value: Any) -> ColumnElement[bool]:
        """WHERE clause finding ``field == value`` after normalisation (see module docstring).

        Decoded candidates must be re-checked with :meth:`matches`.
        """
        return search_clause(self.table, self.codec, behaviour, field, value)

    def matches(self, field: str, stored: Any, wanted: Any) -> bool:
        """Whether a decoded ``stored`` value equals ``wanted`` under the blind-index rule."""
        return matches(self.spec, field, stored, wanted)

    def column(self, name: str) -> ColumnClause[Any]:
        return self.table.c[name]
