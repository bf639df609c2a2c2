"""What an ORM statement asks of encrypted fields: rewrite what can be answered, refuse the rest.

Every phase must answer a statement the same way, so a clause on an encrypted field is either
rewritten into one that is right in every phase, or refused before anything runs:

* ``Model.field == value`` on a searchable field becomes the blind-index clause of
  :func:`dualwrite.runtime.search.search_clause` (plus the plaintext arm while the plaintext
  column exists and reads may serve it, ``contract`` included); the value must be inline (a
  literal, not a ``bindparam`` filled in later);
* any other use of an encrypted field in ``WHERE``/``ORDER BY``/``GROUP BY``/``HAVING``
  (``LIKE``, ``ilike``, ``contains``, ``<``, ordering, equality on a field without ``search``)
  raises :class:`~dualwrite.errors.UnsupportedQueryError`: the ciphertext cannot answer it and
  the plaintext is gone from ``contract`` on;
* selecting an encrypted field's column on its own (``select(Model.email)``) is refused too
  (the column holds plaintext only while the phase writes it); select the entity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, ColumnClause

from dualwrite.errors import UnsupportedQueryError

__all__ = ["FieldRef", "check_selected", "rewrite_criteria"]

FieldRef = Callable[[Any], Any]
"""``column element -> (model, field spec) or None``: which encrypted field a column is."""

_CRITERIA = ("_where_criteria", "_order_by_clauses", "_group_by_clauses", "_having_criteria")


def _children(elem: Any) -> Iterator[Any]:
    try:
        yield from elem.get_children()
    except (AttributeError, TypeError):
        return


def _equality(elem: Any, field_of: FieldRef) -> tuple[Any, Any, Any] | None:
    """``(model, field, (column, value))`` when ``elem`` is ``<field column> == <literal>``."""
    if not isinstance(elem, BinaryExpression) or elem.operator is not operators.eq:
        return None
    for col, other in ((elem.left, elem.right), (elem.right, elem.left)):
        found = field_of(col)
        if found is not None and isinstance(other, BindParameter):
            return found[0], found[1], (col, other)
    return None


def _refuse(model: Any, field: Any, what: str) -> UnsupportedQueryError:
    return UnsupportedQueryError(
        f"{model.spec.name}: {what} on encrypted field {field.name} cannot be answered in every "
        "phase (only equality on a field declared with search is)"
    )


def _scan(elem: Any, field_of: FieldRef) -> None:
    """Raise on any reference to an encrypted field that is not a rewritable equality."""
    eq = _equality(elem, field_of)
    if eq is not None:
        model, field, (_, bind) = eq
        if field.blind_index is None:
            raise _refuse(model, field, "equality")
        if bind.callable is None and bind.value is None and bind.required:
            raise _refuse(model, field, "a bindparam filled in at execution")
        return
    if isinstance(elem, ColumnClause):
        found = field_of(elem)
        if found is not None:
            raise _refuse(found[0], found[1], "this comparison, LIKE or ordering")
        return
    for child in _children(elem):
        _scan(child, field_of)


def rewrite_criteria(
    statement: Any, field_of: FieldRef, clause: Callable[[Any, Any, Any, Any], ColumnElement[bool]]
) -> Any:
    """``statement`` with each searchable equality replaced by ``clause(model, field, column,
    value)``; raises :class:`UnsupportedQueryError` for every other use of an encrypted field.
    Returns ``statement`` itself when nothing refers to an encrypted field."""
    touched = False
    for name in _CRITERIA:
        for crit in getattr(statement, name, ()) or ():
            _scan(crit, field_of)
            touched = touched or _mentions(crit, field_of)
    if not touched:
        return statement

    def replace(elem: Any) -> Any:
        eq = _equality(elem, field_of)
        if eq is None:
            return None
        model, field, (col, bind) = eq
        return clause(model, field, col, bind.effective_value)

    return visitors.replacement_traverse(statement, {}, replace)  # type: ignore[call-overload]


def _mentions(elem: Any, field_of: FieldRef) -> bool:
    if isinstance(elem, ColumnClause):
        return field_of(elem) is not None
    return any(_mentions(c, field_of) for c in _children(elem))


def check_selected(statement: Any, field_of: FieldRef) -> None:
    """Refuse a select of an encrypted field's column on its own (entities are fine)."""
    for desc in getattr(statement, "column_descriptions", ()):
        expr, entity = desc.get("expr"), desc.get("entity")
        if expr is None or expr is entity or isinstance(expr, type):
            continue
        element = expr.__clause_element__() if hasattr(expr, "__clause_element__") else expr
        if getattr(element, "is_selectable", False) or (
            hasattr(element, "entity_namespace") and (getattr(element, "_is_aliased_class", False))
        ):
            continue
        for inner in visitors.iterate(element):
            found = field_of(inner) if isinstance(inner, ColumnClause) else None
            if found is not None:
                raise UnsupportedQueryError(
                    f"{found[0].spec.name}: selecting the column of encrypted field "
                    f"{found[1].name} on its own is not supported (it holds plaintext only "
                    "while the phase writes it): select the entity instead"
                )
