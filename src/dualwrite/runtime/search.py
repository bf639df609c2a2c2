"""Equality search on encrypted fields, shared by the Core API and the ORM integration.

:func:`search_clause` builds the WHERE clause finding ``field == value`` on a table that has
the field's ``<name>_bidx`` column (an :class:`~dualwrite.runtime.table.EncryptedTable`'s table,
or a model's table once :mod:`dualwrite.runtime.orm` added the columns):

* ``bidx = :digest`` -- the blind index of the value under the field's normalisation
  (``email``, ``phone``, ``text``, or ``exact`` for typed values: the canonical text);
* while the plaintext column exists and a read may serve it (reads from plaintext, or falls
  back to it: ``plaintext`` .. ``contract``), a row without blind index -- not backfilled yet, or
  changed by a writer that knows nothing of dualwrite, whose change the guard trigger cleared
  the blind index of -- is found by its plaintext, so the clause is
  ``bidx = :digest OR (bidx IS NULL AND <plaintext matches>)``: for ``exact`` the plaintext
  column equals the value, for the text kinds a normal form computed in SQL
  (``lower(btrim(email))``, the digits of a phone) -- close to, not exactly, the blind-index
  normalisation (no NFKC/casefold in SQL), so decoded candidates are re-checked with
  :func:`matches`. Search finds what a read serves: in ``contract`` a legacy writer's new value
  is read (counted fallback) and found alike until the next purge encrypts it;
* once the plaintext column is gone (``finalized``, or a ``contract`` unit of work that found it
  dropped) the clause is ``bidx = :digest`` alone.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_, func, literal, or_

from dualwrite.crypto import BlindIndex
from dualwrite.phases import Behaviour, ReadSource
from dualwrite.spec import MigrationSpec

if TYPE_CHECKING:
    from dualwrite.runtime.codec import FieldCodec

__all__ = [
    "matches",
    "search_clause",
    "serves_plaintext",
    "table_matches",
    "without_ciphertext",
]


def table_matches(table: Table, spec: MigrationSpec) -> bool:
    """Whether a SQLAlchemy ``table`` is the spec's table (``public`` and no schema alike)."""
    mine = spec.schema if spec.schema != "public" else None
    theirs = table.schema if table.schema != "public" else None
    return table.name == spec.table_name and mine == theirs


def without_ciphertext(behaviour: Behaviour) -> Behaviour:
    """``behaviour`` writing no ciphertext (the first half of an insert whose key the database
    generates: the ciphertext follows once the key is known)."""
    return dataclasses.replace(behaviour, writes_ciphertext=False)


def serves_plaintext(behaviour: Behaviour) -> bool:
    """Whether a read in this phase may serve a row's plaintext (and so search must find it).

    >>> from dualwrite.phases import behaviour
    >>> [p for p in ("backfill", "read_switch", "contract", "finalized")
    ...  if serves_plaintext(behaviour(p))]
    ['backfill', 'read_switch', 'contract']
    """
    b = behaviour
    return b.plaintext_column_exists and (
        b.reads_from is ReadSource.PLAINTEXT or b.fallback_to_plaintext
    )


def search_clause(
    table: Table, codec: FieldCodec, behaviour: Behaviour, field: str, value: Any
) -> ColumnElement[bool]:
    """WHERE clause finding ``field == value`` (see the module docstring)."""
    f = codec.spec.field(field)
    if f.blind_index is None or f.bidx_column is None:
        raise ValueError(f"field {field} is not searchable")
    bidx_col = table.c[f.bidx_column]
    digest = codec.bidx_for(field, value) if codec.can_encrypt else None
    by_index: ColumnElement[bool] = bidx_col == digest if digest is not None else literal(False)
    if not serves_plaintext(behaviour):
        return by_index
    plain = table.c[f.plaintext_column]
    if f.blind_index == "exact":
        return or_(by_index, and_(bidx_col.is_(None), plain == f.value_type.coerce(value)))
    normal = BlindIndex.normalize(value, f.blind_index)
    loose: ColumnElement[Any]
    if f.blind_index == "email":
        loose, wanted = func.lower(func.btrim(plain)), normal.lower()
    elif f.blind_index == "phone":
        loose, wanted = func.regexp_replace(plain, "[^0-9]", "", "g"), normal
    else:
        loose = func.lower(func.regexp_replace(func.btrim(plain), r"\s+", " ", "g"))
        wanted = normal.lower()
    return or_(by_index, and_(bidx_col.is_(None), loose == wanted))


def matches(spec: MigrationSpec, field: str, stored: Any, wanted: Any) -> bool:
    """Whether a decoded ``stored`` value equals ``wanted`` under the field's search rule."""
    f = spec.field(field)
    kind = f.blind_index
    if stored is None or kind is None:
        return False
    if kind == "exact":
        return f.value_type.equal(stored, wanted)
    return BlindIndex.normalize(stored, kind) == BlindIndex.normalize(wanted, kind)
