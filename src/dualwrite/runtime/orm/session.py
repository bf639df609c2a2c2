"""The session side of the ORM integration: one phase per unit of work, statement hooks.

Installed once per process on :class:`sqlalchemy.orm.Session` (so on every ``AsyncSession``,
whose sync session is one) and on :class:`sqlalchemy.engine.Engine`:

* **one phase per unit of work**: the first statement or flush of a transaction that touches an
  encrypted model takes the phase once (``session.info``); it holds until the outermost
  transaction ends (commit or rollback), like a request in the Core path;
* **the finalize window**: a unit of work that takes ``contract`` first locks the table
  (``ACCESS SHARE``, so the contract revision cannot drop the plaintext columns until it ends)
  and checks they still exist; if the revision already dropped them the unit of work runs as
  ``finalized`` would (no plaintext column touched) and the owner is told to refresh -- so
  finalizing fails no request. Two extra statements, once per unit of work, in ``contract``
  only;
* **self-fencing**: the first insert or update of an encrypted model in a unit of work asks the
  model's fence (the watcher it was bound with, :mod:`dualwrite.runtime.fence`) on the flush's
  connection whether the phase it took is still current; a stale one raises
  :class:`~dualwrite.errors.FencedError` before the flush writes anything. Once per unit of
  work (one ``SELECT`` of the state row);
* ``do_orm_execute``: ORM ``insert(Model)`` statements (bulk inserts, no per-object events) and
  updates that set an encrypted field are refused; criteria are rewritten or refused
  (:mod:`dualwrite.runtime.orm.criteria`); entity loads get the loader options the phase needs;
* ``before_execute`` on engines: a Core ``INSERT``/``UPDATE`` of an encrypted model's table that
  writes a field outside a flush -- what ``bulk_save_objects``/``bulk_insert_mappings``/
  ``bulk_update_mappings`` emit -- is refused before it runs.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import ORMExecuteState, Session, defaultload
from sqlalchemy.sql.dml import Insert, Update

from dualwrite.errors import UnsupportedQueryError
from dualwrite.phases import Behaviour, Phase
from dualwrite.runtime.orm.criteria import check_selected, rewrite_criteria
from dualwrite.runtime.search import search_clause
from dualwrite.runtime.table import without_plaintext_columns

EncryptedModel = Any  # dualwrite.runtime.orm.model.EncryptedModel (which imports this module)
__all__ = ["fence_unit_of_work", "install", "register", "unit_of_work_behaviour"]

_INFO = "dualwrite.behaviour"
_FENCED = "dualwrite.fenced"
_FLUSHING = "dualwrite.flushing"
_MODELS: dict[type[Any], EncryptedModel] = {}
_TABLES: dict[Any, EncryptedModel] = {}
_installed = False
_BACKGROUND: set[asyncio.Future[Any]] = set()

_PLAINTEXT_PRESENT = (
    "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attnum > 0 "
    "AND NOT attisdropped AND attname = ANY(:cols)"
)


def register(em: EncryptedModel) -> None:
    _MODELS[em.model] = em
    _TABLES[em.table] = em
    install()


def install() -> None:
    """Listen on ``Session`` and ``Engine`` (idempotent; :func:`register` calls it)."""
    global _installed
    if _installed:
        return
    event.listen(Session, "do_orm_execute", _on_execute)
    event.listen(Session, "after_transaction_end", _on_transaction_end)
    event.listen(Session, "before_flush", _on_before_flush)
    event.listen(Engine, "before_execute", _guard_core_writes, retval=True)
    _installed = True


# --- the unit of work's phase ---------------------------------------------------------------


def unit_of_work_behaviour(
    session: Session | None, em: EncryptedModel, connection: Any = None
) -> Behaviour | None:
    """The phase ``em``'s migration runs under in ``session``'s current transaction (taken on
    first use; ``None`` while the migration is not registered)."""
    if session is None:
        found: Behaviour | None = em.phase()
        return found
    taken: dict[str, Behaviour | None] = session.info.setdefault(_INFO, {})
    name = em.spec.name
    if name in taken:
        return taken[name]
    b: Behaviour | None = em.phase()
    if b is not None and b.phase is Phase.CONTRACT:
        b = _contract_window(session, em, b, connection)
    taken[name] = b
    return b


def fence_unit_of_work(
    session: Session | None, em: EncryptedModel, connection: Any, b: Behaviour
) -> None:
    """Ask ``em``'s fence once per unit of work, on the flush's ``connection`` (see above)."""
    if em.fence is None:
        return
    done: set[str] = set() if session is None else session.info.setdefault(_FENCED, set())
    if em.spec.name not in done:
        em.fence.fence_sync(connection, em.spec.name, b)
        done.add(em.spec.name)


def _contract_window(session: Session, em: EncryptedModel, b: Behaviour, conn: Any) -> Behaviour:
    conn = conn if conn is not None else session.connection()
    conn.execute(text(f"LOCK TABLE {em.spec.sql_table} IN ACCESS SHARE MODE"))
    cols = list(em.spec.field_names)
    found = conn.execute(text(_PLAINTEXT_PRESENT), {"t": em.spec.sql_table, "cols": cols})
    if int(found.scalar_one()) == len(cols):
        return b
    if em.on_columns_dropped is not None:
        result = em.on_columns_dropped()  # e.g. watcher.refresh: a coroutine is scheduled
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
    return without_plaintext_columns(b)


def _on_transaction_end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_INFO, None)
        session.info.pop(_FENCED, None)


def _on_before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    """Mark the connection as flushing for this session (the Core guard lets the flush's own
    statements through; a stale mark is harmless: it holds only while the session flushes)."""
    if any(type(o) in _MODELS for o in (*session.new, *session.dirty)):
        session.connection().info[_FLUSHING] = weakref.ref(session)


def _flushing(conn: Any) -> Session | None:
    ref = conn.info.get(_FLUSHING)
    session = ref() if ref is not None else None
    return session if session is not None and getattr(session, "_flushing", False) else None


# --- statements -------------------------------------------------------------------------------


def _field_of(session: Session) -> Any:
    def field_of(elem: Any) -> tuple[EncryptedModel, Any] | None:
        table = getattr(elem, "table", None)
        base = getattr(table, "element", table)  # an alias of the table
        em = _TABLES.get(base)
        if em is None:
            return None
        name = getattr(elem, "name", None)
        f = em.spec._by_name.get(name) if isinstance(name, str) else None
        return None if f is None else (em, f)

    return field_of


def _on_execute(state: ORMExecuteState) -> None:
    if not _TABLES:
        return
    mine = [_MODELS[m.class_] for m in state.all_mappers if m.class_ in _MODELS]
    session = state.session
    field_of = _field_of(session)
    stmt = state.statement
    if state.is_insert and mine:
        raise UnsupportedQueryError(
            f"{mine[0].spec.name}: ORM bulk INSERT of an encrypted model has no per-object "
            "events: add objects with session.add() and flush"
        )
    if state.is_update and mine:
        _refuse_field_updates(state, mine[0])

    def clause(em: EncryptedModel, f: Any, col: Any, value: Any) -> Any:
        b = unit_of_work_behaviour(session, em)
        if b is None:  # not registered yet: the plaintext only (no blind index column yet)
            return col == value
        return search_clause(col.table, em.require_codec(), b, f.name, value)

    if state.is_select:
        check_selected(stmt, field_of)
    new = rewrite_criteria(stmt, field_of, clause)
    if state.is_select:
        new = _with_load_options(state, new, session, mine)
    if new is not stmt:
        state.statement = new


def _with_load_options(
    state: ORMExecuteState, stmt: Any, session: Session, mine: list[EncryptedModel]
) -> Any:
    for em in mine:
        b = unit_of_work_behaviour(session, em)
        if b is None:
            continue
        props = stmt._compile_options._only_load_props if state.is_column_load else None
        if props:
            wanted = em.load_props(b, props)
            if wanted != props:
                stmt = stmt._clone()
                stmt._compile_options += {"_only_load_props": wanted}
        elif any(d.get("expr") is em.model for d in stmt.column_descriptions):
            opts = em.load_options(b, _relationship_path(stmt))
            if opts:
                stmt = stmt.options(*opts)
    return stmt


def _relationship_path(stmt: Any) -> Any:
    """For a relationship load (lazy or ``selectinload``), a ``defaultload`` chain to the
    loaded entity: loader options of a relationship load are matched against its path."""
    path = getattr(getattr(stmt, "_compile_options", None), "_current_path", None)
    elements = tuple(getattr(path, "path", ()) or ())
    chain = None
    for mapper, prop in zip(elements[0::2], elements[1::2], strict=False):
        attr = getattr(mapper.class_, prop.key)
        chain = defaultload(attr) if chain is None else chain.defaultload(attr)
    return chain


def _refuse_field_updates(state: ORMExecuteState, em: EncryptedModel) -> None:
    stmt = state.statement
    keys = {getattr(k, "key", k) for k in (getattr(stmt, "_values", None) or {})}
    params = state.parameters
    for p in params if isinstance(params, list) else [params or {}]:
        keys.update(p)
    names = {em.attr[f.plaintext_column] for f in em.spec.fields} | set(em.spec.field_names)
    hit = sorted(str(k) for k in keys if str(k) in names)
    if hit:
        raise UnsupportedQueryError(
            f"{em.spec.name}: ORM bulk UPDATE of encrypted field {hit[0]} has no per-object "
            "events: load the objects, assign the attribute and flush"
        )


def _guard_core_writes(
    conn: Any, clause: Any, multiparams: Any, params: Any, options: Any
) -> tuple[Any, Any, Any]:
    """Refuse Core INSERT/UPDATE statements writing encrypted fields outside an ORM flush; in
    a flush whose phase has no plaintext columns (``finalized``, or the finalize window), leave
    them out of the statement (the ORM lists every column of an INSERT)."""
    dml = isinstance(clause, Insert | Update)
    em = _TABLES.get(getattr(clause, "table", None)) if dml else None
    if em is None:
        return clause, multiparams, params
    session = _flushing(conn)
    if session is not None:
        b = unit_of_work_behaviour(session, em)
        if b is None or b.plaintext_column_exists:
            return clause, multiparams, params
        dropped = {em.table.c[n].key for n in em.spec.field_names}

        def strip(p: Any) -> Any:
            return {k: v for k, v in p.items() if k not in dropped} if isinstance(p, dict) else p

        return clause, [strip(p) for p in multiparams or ()], strip(params)
    keys = {getattr(k, "key", k) for k in (getattr(clause, "_values", None) or {})}
    for p in [*(multiparams or ()), params or {}]:
        for item in p if isinstance(p, list | tuple) else [p]:
            if isinstance(item, dict):
                keys.update(item)
    names = set(em.spec.field_names) | {em.attr[n] for n in em.spec.field_names}
    hit = sorted(str(k) for k in keys if str(k) in names)
    if hit:
        raise UnsupportedQueryError(
            f"{em.spec.name}: a bulk or Core write of encrypted field {hit[0]} on "
            f"{em.spec.table} bypasses encryption: use session.add() and flush (or "
            "EncryptedTable for Core code)"
        )
    return clause, multiparams, params
