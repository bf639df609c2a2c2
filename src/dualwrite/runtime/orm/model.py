"""One encrypted declarative model: its added columns, and what loads and flushes do with them.

:class:`EncryptedModel` (made by :func:`dualwrite.runtime.orm.encrypted`) adds the
``<name>_encrypted`` / ``<name>_bidx`` / ``<name>_uidx`` columns to the model's table as
*deferred* properties (a phase that does not read them never selects them) and listens to the
mapper's ``load``/``refresh`` and ``before_insert``/``after_insert``/``before_update``/
``after_update`` events. The app's own attributes keep their names and Python types in every
phase; what reaches the database follows the session's phase snapshot
(:mod:`dualwrite.runtime.orm.session`):

* **loads**: in a phase reading ciphertext, each field attribute is set (as its committed
  value, so nothing looks modified) to the decrypted value -- the plaintext read, counted,
  where the ciphertext is missing and the phase falls back; shadow reads sample as in the Core
  path. A model loaded without its ciphertext columns (a joined eager load) in such a phase
  raises :class:`~dualwrite.errors.UnsupportedQueryError` (use ``selectinload``);
* **inserts**: the ciphertext (blind index, unique HMAC) of every field goes into the same
  ``INSERT``; ``contract`` writes the plaintext as NULL, ``finalized`` leaves it out. A key the
  app did not set is taken first from the column's Python default; a server-generated key
  (identity, serial) comes back from ``INSERT ... RETURNING`` and the ciphertexts follow in an
  ``UPDATE`` of that row in the same transaction (never bound to a wrong key). The object keeps
  the values the app gave it;
* **updates**: only changed fields are re-encrypted; a primary-key change re-encrypts every
  field (the guard trigger refuses one that keeps a ciphertext bound to the old key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Column, LargeBinary, Table, event, null, update
from sqlalchemy.orm import Mapper, attributes, deferred
from sqlalchemy.orm import defer as defer_option
from sqlalchemy.orm import undefer as undefer_option
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.sql import ClauseElement

from dualwrite.crypto import row_key_of
from dualwrite.errors import ConfigError, UnsupportedQueryError
from dualwrite.phases import Behaviour, ReadSource
from dualwrite.runtime.fence import WriteFence
from dualwrite.runtime.layout import read_columns
from dualwrite.runtime.search import table_matches
from dualwrite.schema.sql import added_columns
from dualwrite.spec import FieldSpec, MigrationSpec

if TYPE_CHECKING:
    from dualwrite.runtime.codec import FieldCodec

__all__ = ["EncryptedModel"]

_PENDING = "dualwrite.pending"  # state.info: values to restore / encrypt after the INSERT


class EncryptedModel:
    """The encryption of one declarative model class (see the module docstring)."""

    def __init__(self, model: type[Any], spec: MigrationSpec) -> None:
        mapper: Mapper[Any] = attributes.manager_of_class(model).mapper
        table = cast(Table, mapper.local_table)
        if not table_matches(table, spec):
            raise ConfigError(f"{model.__name__} is not mapped to {spec.table} ({spec.name})")
        pk = list(mapper.primary_key)
        if len(pk) != 1 or pk[0].name != spec.primary_key:
            raise ConfigError(
                f"{model.__name__}: dualwrite needs the single primary key {spec.primary_key}"
            )
        self.model, self.spec, self.mapper, self.table = model, spec, mapper, table
        self.key_column = pk[0]
        self.key_attr = mapper.get_property_by_column(pk[0]).key
        self.attr: dict[str, str] = {}  # column name -> attribute key
        for f in spec.fields:
            if f.plaintext_column not in table.c:
                raise ConfigError(f"{model.__name__} has no column {f.plaintext_column}")
            col = table.c[f.plaintext_column]
            self.attr[f.plaintext_column] = mapper.get_property_by_column(col).key
            for name in added_columns(f):
                if name not in table.c:
                    table.append_column(Column(name, LargeBinary))
                mapper.add_property(name, deferred(table.c[name]))
                self.attr[name] = name
        self.fields_by_column: dict[Any, FieldSpec] = {
            table.c[f.plaintext_column]: f for f in spec.fields
        }
        self.codec: FieldCodec | None = None
        self.phase: Callable[[], Behaviour | None] = lambda: None
        self.on_columns_dropped: Callable[[], object] | None = None
        self.fence: WriteFence | None = None
        self._listen()

    # --- runtime binding ---------------------------------------------------------------------

    def bind(
        self,
        codec: FieldCodec,
        phase: Callable[[], Behaviour | None],
        *,
        on_columns_dropped: Callable[[], object] | None = None,
        fence: WriteFence | None = None,
    ) -> EncryptedModel:
        """Serve the model with ``codec`` (keys, metrics, read events) under the phase that
        ``phase()`` returns (e.g. ``lambda: watcher.behaviour("patients_pii")``; ``None`` while
        the migration is not registered). ``on_columns_dropped`` is called when a ``contract``
        unit of work finds the plaintext columns dropped (ask the watcher to refresh). With a
        ``fence`` (the watcher), every unit of work that writes the model fences itself and
        the watcher heartbeats this migration (:mod:`dualwrite.runtime.fence`)."""
        if codec.spec != self.spec:
            raise ConfigError(f"the codec is not the codec of {self.spec.name}")
        self.codec, self.phase, self.on_columns_dropped = codec, phase, on_columns_dropped
        self.fence = fence
        if fence is not None:
            fence.serve(self.spec.name)
        return self

    def require_codec(self) -> FieldCodec:
        if self.codec is None:
            raise ConfigError(
                f"{self.model.__name__} is declared encrypted but not bound: call .bind(codec, "
                "phase) at start-up"
            )
        return self.codec

    # --- loader options a phase needs ------------------------------------------------------

    def load_options(self, b: Behaviour, path: Any = None) -> list[Any]:
        """``undefer`` the ciphertext columns a phase reads, ``defer`` dropped plaintext (below
        ``path``, a loader chain, for a relationship load)."""
        wanted = set(read_columns(self.spec, b))
        undefer, defer = (
            (undefer_option, defer_option) if path is None else (path.undefer, path.defer)
        )
        opts: list[Any] = []
        for f in self.spec.fields:
            if f.ciphertext_column in wanted:
                opts.append(undefer(getattr(self.model, f.ciphertext_column)))
            if not b.plaintext_column_exists:
                opts.append(defer(getattr(self.model, self.attr[f.plaintext_column])))
        return opts

    def load_props(self, b: Behaviour, props: frozenset[str]) -> frozenset[str]:
        """The attributes a refresh of ``props`` must load in this phase."""
        wanted = set(read_columns(self.spec, b))
        out = set(props)
        for f in self.spec.fields:
            pt = self.attr[f.plaintext_column]
            if pt in props:
                if f.ciphertext_column in wanted:
                    out.add(f.ciphertext_column)
                if f.plaintext_column not in wanted:
                    out.discard(pt)
        return frozenset(out)

    # --- events ----------------------------------------------------------------------------

    def _listen(self) -> None:
        m = self.mapper
        event.listen(m, "load", self._on_load)
        event.listen(m, "refresh", self._on_refresh)
        event.listen(m, "before_insert", self._before_insert)
        event.listen(m, "after_insert", self._after_insert)
        event.listen(m, "before_update", self._before_update)
        event.listen(m, "after_update", self._after_update)

    def _behaviour(self, target: Any, connection: Any = None) -> Behaviour | None:
        from dualwrite.runtime.orm.session import unit_of_work_behaviour

        session = attributes.instance_state(target).session
        return unit_of_work_behaviour(session, self, connection)

    def _on_load(self, target: Any, context: Any) -> None:
        self._decode(target, None)

    def _on_refresh(self, target: Any, context: Any, attrs: Any) -> None:
        self._decode(target, attrs)

    def _decode(self, target: Any, attrs: Any) -> None:
        b = self._behaviour(target)
        if b is None or not (b.reads_from is ReadSource.CIPHERTEXT or b.shadow_compare):
            return
        codec = self.require_codec()
        state = attributes.instance_state(target)
        d = state.dict
        names = read_columns(self.spec, b)
        fields = [f for f in self.spec.fields if attrs is None or self._touches(f, attrs)]
        if not fields:
            return
        if b.reads_from is ReadSource.CIPHERTEXT:
            missing = [f.name for f in fields if f.ciphertext_column not in d]
            if missing:
                raise UnsupportedQueryError(
                    f"{self.spec.name}: {self.model.__name__} was loaded without its ciphertext "
                    f"({', '.join(missing)}): load it with select()/selectinload, not joinedload"
                )
        row = tuple(d.get(self.attr[n]) for n in names)
        layout = codec.layout(b, names)
        values = codec.decode(layout, row, row_key_of(d[self.key_attr]), [f.name for f in fields])
        if b.reads_from is ReadSource.CIPHERTEXT:
            for f in fields:
                attributes.set_committed_value(
                    target, self.attr[f.plaintext_column], values[f.name]
                )

    def _touches(self, f: FieldSpec, attrs: Any) -> bool:
        return self.attr[f.plaintext_column] in attrs or f.ciphertext_column in attrs

    def _values(self, target: Any, fields: list[FieldSpec]) -> dict[str, Any]:
        d = attributes.instance_state(target).dict
        out = {}
        for f in fields:
            key = self.attr[f.plaintext_column]
            if key not in d:
                raise UnsupportedQueryError(
                    f"{self.spec.name}: field {f.name} is not loaded; load every encrypted "
                    "field before changing the primary key"
                )
            value = d[key]
            if hasattr(value, "__clause_element__") or isinstance(value, ClauseElement):
                raise UnsupportedQueryError(
                    f"{self.spec.name}: field {f.name} was set to a SQL expression, which "
                    "cannot be encrypted: assign a value"
                )
            out[f.name] = value
        return out

    def _seal(self, target: Any, b: Behaviour, values: dict[str, Any], key: Any) -> None:
        cols = self.require_codec().write_columns(b, values, row_key_of(key))
        for f in self.spec.fields:
            for name in added_columns(f):
                if name in cols:
                    setattr(target, name, cols[name])

    def _hide_plaintext(self, target: Any, b: Behaviour, fields: list[FieldSpec]) -> None:
        """``contract``: the statement writes NULL; ``finalized``: it leaves the column out."""
        state = attributes.instance_state(target)
        for f in fields:
            key = self.attr[f.plaintext_column]
            if b.plaintext_column_exists:
                state.dict[key] = null()
                state.committed_state.setdefault(key, NO_VALUE)
            elif state.key is None:
                state.dict.pop(key, None)
            else:
                attributes.set_committed_value(target, key, state.dict.get(key))

    def _fence(self, target: Any, connection: Any, b: Behaviour) -> None:
        from dualwrite.runtime.orm.session import fence_unit_of_work

        fence_unit_of_work(attributes.instance_state(target).session, self, connection, b)

    def _before_insert(self, mapper: Any, connection: Any, target: Any) -> None:
        b = self._behaviour(target, connection)
        if b is None:
            return
        self._fence(target, connection, b)
        fields = list(self.spec.fields)
        values = self._values(target, fields)
        key = getattr(target, self.key_attr)
        if key is None:
            key = self._python_default_key()
            if key is not None:
                setattr(target, self.key_attr, key)
        later = b.writes_ciphertext and key is None  # the database picks the key: seal after
        if b.writes_ciphertext and not later:
            self._seal(target, b, values, key)
        if not b.writes_plaintext:
            self._hide_plaintext(target, b, fields)
        attributes.instance_state(target).info[_PENDING] = (b, values, later)

    def _python_default_key(self) -> Any:
        """The key column's Python-side default, evaluated now (``None`` when there is none or
        it needs the statement's context: the key then comes back from ``RETURNING``)."""
        default: Any = self.key_column.default
        if default is None:
            return None
        if getattr(default, "is_scalar", False):
            return default.arg
        if getattr(default, "is_callable", False):
            try:
                return default.arg(None)
            except Exception:
                return None
        return None

    def _after_insert(self, mapper: Any, connection: Any, target: Any) -> None:
        pending = attributes.instance_state(target).info.pop(_PENDING, None)
        if pending is None:
            return
        b, values, later = pending
        if later:
            key = getattr(target, self.key_attr)
            cols = self.require_codec().write_columns(b, values, row_key_of(key))
            sealed = {c: cols[c] for f in self.spec.fields for c in added_columns(f) if c in cols}
            connection.execute(update(self.table).where(self.key_column == key).values(sealed))
            for name, v in sealed.items():
                attributes.set_committed_value(target, name, v)
        self._restore(target, b, values)

    def _restore(self, target: Any, b: Behaviour, values: dict[str, Any]) -> None:
        """Give the object back the values the app set (the statement wrote NULL or nothing)."""
        if not b.writes_plaintext:
            for name, value in values.items():
                attributes.set_committed_value(target, self.attr[name], value)

    def _before_update(self, mapper: Any, connection: Any, target: Any) -> None:
        b = self._behaviour(target, connection)
        if b is None:
            return
        self._fence(target, connection, b)
        state = attributes.instance_state(target)
        key_changed = state.attrs[self.key_attr].history.has_changes()
        fields = [
            f for f in self.spec.fields
            if key_changed or state.attrs[self.attr[f.plaintext_column]].history.has_changes()
        ]  # fmt: skip
        if not fields:
            return
        values = self._values(target, fields)
        if b.writes_ciphertext:
            self._seal(target, b, values, getattr(target, self.key_attr))
        if not b.writes_plaintext:
            self._hide_plaintext(target, b, fields)
        state.info[_PENDING] = (b, values, False)

    def _after_update(self, mapper: Any, connection: Any, target: Any) -> None:
        pending = attributes.instance_state(target).info.pop(_PENDING, None)
        if pending is not None:
            self._restore(target, pending[0], pending[1])
