"""Value codecs: the canonical text of a typed value, and back (pure; DESIGN.md section 3).

A field's plaintext bytes are the UTF-8 of the canonical text of its value **as PostgreSQL
stores it** -- after the coercion to the column's type, precision and scale -- so a ciphertext
always decrypts to what a read of the plaintext column returns, not to what the app sent.
:func:`value_type` parses the column type captured at registration (``format_type`` text):

>>> import datetime, decimal
>>> money = value_type("numeric(10,2)")
>>> money.encode(decimal.Decimal("12.3")), money.encode(12.345), money.decode("12.30")
('12.30', '12.35', Decimal('12.30'))
>>> value_type("timestamp(3) with time zone").encode(
...     datetime.datetime(2024, 1, 2, 3, 4, 5, 678950, tzinfo=datetime.UTC))
'2024-01-02T03:04:05.679000+00:00'
>>> value_type("jsonb").encode({"b": [1.50, 1e20], "a": "é"})
'{"a":"é","b":[1.5,100000000000000000000]}'

Each coercion (checked against real PostgreSQL casts in tests/integration/test_value_codecs.py):

* ``text`` as is; ``varchar(n)``/``char(n)``: an over-long value whose excess is only spaces is
  cut to ``n`` (anything else is refused, like PostgreSQL does), ``char(n)`` is space-padded;
* ``date`` -> ``YYYY-MM-DD`` (a ``datetime`` keeps its date, as the driver sends it);
* ``timestamp[(p)]`` -> ``YYYY-MM-DDTHH:MM:SS.ffffff``; ``timestamptz`` the same in UTC with
  ``+00:00``; fractions are rounded to ``p`` digits the way PostgreSQL rounds (half away from
  zero on the microseconds since 2000-01-01); a naive ``datetime`` written into a
  ``timestamptz`` is read as the app host's local time (what asyncpg sends);
* integers -> decimal (range-checked); ``boolean`` -> ``true``/``false``; ``json`` refused;
* ``numeric(p,s)`` -> rounded half away from zero to ``s`` digits (a ``float`` is taken at its
  exact binary value, as the driver sends it), overflow refused; unconstrained ``numeric``
  keeps the scale it was given; text output is PostgreSQL's (no exponent, no negative zero);
* ``jsonb`` -> ``json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` of
  the document a read returns: numbers take PostgreSQL's ``numeric`` text (``1e20`` is
  ``100000000000000000000``, ``2.50`` stays ``2.50`` -- then ``2.5`` once parsed), the last of
  duplicate keys wins, ``\\u0000`` is refused.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dualwrite.crypto.pgtext import (
    jsonb_document,
    jsonb_text,
    numeric_text,
    round_micros,
    wide_context,
)
from dualwrite.errors import UnsupportedTypeError

__all__ = ["ValueType", "value_type"]

_UTC = dt.UTC
_PG_EPOCH = dt.datetime(2000, 1, 1)
_PG_EPOCH_TZ = dt.datetime(2000, 1, 1, tzinfo=_UTC)
_US = dt.timedelta(microseconds=1)
_INT_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
_TYPE = re.compile(
    r"^(?P<base>[a-z ]+?)(?:\((?P<a>-?\d+)(?:,(?P<b>-?\d+))?\))?(?P<tz> with(?:out)? time zone)?$"
)
_REFUSED = {
    "json": "json keeps duplicate keys and key order (use jsonb)",
    "real": "floating-point values do not round-trip exactly (use numeric)",
    "double precision": "floating-point values do not round-trip exactly (use numeric)",
}


@functools.lru_cache(maxsize=512)
def value_type(sql_type: str) -> ValueType:
    """The :class:`ValueType` of a column type as ``format_type`` prints it.

    >>> value_type("character varying(320)").length, value_type("text").plain
    (320, True)
    >>> value_type("money")
    Traceback (most recent call last):
        ...
    dualwrite.errors.UnsupportedTypeError: column type money cannot be encrypted: \
supported types are text, varchar, char, date, timestamp, timestamptz, smallint, integer, \
bigint, numeric, boolean, jsonb
    """
    text = " ".join(str(sql_type).strip().lower().split())
    text = text.replace(", ", ",")
    m = _TYPE.match(text)
    base = m.group("base").strip() if m else text
    if base in _REFUSED:
        raise UnsupportedTypeError(f"column type {sql_type} cannot be encrypted: {_REFUSED[base]}")
    if m is None or base not in _BASES:
        raise UnsupportedTypeError(
            f"column type {sql_type} cannot be encrypted: supported types are text, varchar, "
            "char, date, timestamp, timestamptz, smallint, integer, bigint, numeric, boolean, jsonb"
        )
    a = int(m.group("a")) if m.group("a") else None
    b = int(m.group("b")) if m.group("b") else None
    tz = m.group("tz") or ""
    kind = _BASES[base]
    if kind == "timestamp" and tz == " with time zone":
        kind = "timestamptz"
    if kind in ("text", "varchar", "bpchar"):
        length = a if kind != "bpchar" else (a or 1)
        return ValueType("text", text, length=length, padded=kind == "bpchar")
    if kind in ("timestamp", "timestamptz"):
        return ValueType(kind, text, precision=6 if a is None else a)
    if kind == "numeric":
        return ValueType("numeric", text, precision=a, scale=(b or 0) if a is not None else None)
    return ValueType(kind, text)


_BASES = {
    "text": "text",
    "character varying": "varchar",
    "varchar": "varchar",
    "character": "bpchar",
    "char": "bpchar",
    "bpchar": "bpchar",
    "date": "date",
    "timestamp": "timestamp",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "timestamptz": "timestamptz",
    "smallint": "smallint",
    "integer": "integer",
    "int": "integer",
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "bigint": "bigint",
    "numeric": "numeric",
    "decimal": "numeric",
    "boolean": "boolean",
    "bool": "boolean",
    "jsonb": "jsonb",
}


def _refuse(what: str, value: object, kind: str) -> TypeError:
    return TypeError(f"{kind} field takes {what}, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class ValueType:
    """How one column type's values are coerced, written as canonical text and read back.

    ``name`` is the kind (``text``, ``date``, ``timestamp``, ``timestamptz``, ``smallint``,
    ``integer``, ``bigint``, ``numeric``, ``boolean``, ``jsonb``); ``sql`` the registered type;
    ``length``/``padded`` for ``varchar(n)``/``char(n)``; ``precision`` the fraction digits of a
    timestamp or the precision of a ``numeric``; ``scale`` a ``numeric``'s scale.
    """

    name: str
    sql: str
    length: int | None = None
    padded: bool = False
    precision: int | None = None
    scale: int | None = None

    # --- what the rest of dualwrite asks -------------------------------------------------

    @property
    def plain(self) -> bool:
        """Unbounded text: the canonical text is the value itself (the fast path)."""
        return self.name == "text" and self.length is None and not self.padded

    @property
    def own_text_limit(self) -> int | None:
        """When a ``str`` is its own text (:meth:`text_of`'s fast path, inlined by the codec):
        ``0`` any length, ``n`` up to ``varchar(n)`` without NUL, ``None`` never (``char(n)``)."""
        return None if self.name != "text" or self.padded else (self.length or 0)

    @property
    def array_type(self) -> str:
        """The SQL type canonical texts are cast to when written back (``text::<type>``)."""
        if self.name == "text":
            return self.sql if self.padded else "text"
        return "numeric" if self.name == "numeric" else self.sql

    @property
    def default_search(self) -> str:
        """The blind-index kind of ``search`` without ``=KIND``: ``text`` or ``exact``."""
        return "text" if self.name == "text" else "exact"

    def encode(self, value: Any) -> str | None:
        """The canonical text of an application value, as PostgreSQL would store it."""
        if value is None:
            return None
        return self.to_text(self.coerce(value))

    def decode(self, text: str | None) -> Any:
        """The Python value of a canonical text (what a read of the column returns)."""
        if text is None:
            return None
        return _FROM_TEXT[self.name](self, text)

    def text_of(self, value: Any) -> str | None:
        """:meth:`encode`, with the fast path of :attr:`own_text_limit` (no conversion).

        >>> v = value_type("character varying(3)")
        >>> v.text_of("abc"), v.text_of("ab  ")
        ('abc', 'ab ')
        """
        if type(value) is str:
            limit = self.own_text_limit
            if limit == 0 or (limit is not None and len(value) <= limit and "\x00" not in value):
                return value
        return self.encode(value)  # None too: its text is None

    def value_of(self, text: str | None) -> Any:
        """:meth:`decode`, with the text fast path (a text column's value is its text)."""
        return text if self.name == "text" else self.decode(text)

    @property
    def reads_as_text(self) -> bool:
        """Whether :meth:`value_of` is the identity (every text kind, padded or not)."""
        return self.name == "text"

    def same(self, text: str | None, value: Any) -> bool:
        """Whether the canonical ``text`` is that of ``value`` (a value that cannot be
        coerced is not the same)."""
        try:
            return text == self.text_of(value)
        except (TypeError, ValueError):
            return False

    def equal(self, a: Any, b: Any) -> bool:
        """Whether two Python values of this column are the same stored value."""
        if a == b:
            return True
        try:
            return self.text_of(a) == self.text_of(b)
        except (TypeError, ValueError):
            return False

    def from_driver(self, value: Any) -> str | None:
        """The canonical text of a value fetched by asyncpg without type codecs (``jsonb``
        arrives as PostgreSQL's own text; every other type as its Python value)."""
        if value is None:
            return None
        if self.name == "jsonb":
            return jsonb_text(json.loads(value)) if isinstance(value, str) else self.encode(value)
        if self.plain:
            return value if isinstance(value, str) else str(value)
        return self.to_text(value)

    def equality_text(self, text: str) -> str:
        """The form a ``unique`` field's HMAC is computed over: equal for values the original
        constraint treats as equal (``numeric`` 1.0 and 1.00 alike), the canonical text
        otherwise."""
        if self.name == "numeric":
            d = decimal.Decimal(text)
            return text if not d.is_finite() else numeric_text(d.normalize(wide_context()))
        return text

    # --- coercion (the value as stored) and canonical text ------------------------------------

    def coerce(self, value: Any) -> Any:
        """``value`` as PostgreSQL stores it in this column (raises like PostgreSQL would)."""
        return _COERCE[self.name](self, value)

    def to_text(self, stored: Any) -> str:
        """The canonical text of an already coerced (stored) value."""
        return _TO_TEXT[self.name](self, stored)

    # --- per kind ------------------------------------------------------------------------

    def _text(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _refuse("str", value, self.sql)
        if "\x00" in value:
            raise ValueError(f"{self.sql} refuses the character U+0000")
        n = self.length
        if n is not None:
            if self.padded:
                value = value.rstrip(" ") if len(value) > n else value
            if len(value) > n:
                if value[n:].strip(" "):
                    raise ValueError(f"value too long for type {self.sql}")
                value = value[:n]
            if self.padded:
                value = value.ljust(n)
        return str(value)

    def _date(self, value: Any) -> dt.date:
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        raise _refuse("datetime.date", value, self.sql)

    def _timestamp(self, value: Any) -> dt.datetime:
        if not isinstance(value, dt.datetime):
            raise _refuse("datetime.datetime", value, self.sql)
        if self.name == "timestamp":
            if value.tzinfo is not None:
                raise TypeError(f"{self.sql} takes a naive datetime, got an aware one")
            base, moved = _PG_EPOCH, value
        else:
            base, moved = _PG_EPOCH_TZ, _in_utc(value, self.sql)  # naive: the host's local time
        precision = self.precision if self.precision is not None else 6
        if precision >= 6:
            return moved  # nothing to round: microseconds are PostgreSQL's resolution
        us = (moved - base) // _US
        rounded = round_micros(us, precision)
        try:
            return base + dt.timedelta(microseconds=rounded)
        except OverflowError:
            raise ValueError(f"timestamp out of range for Python: {self.sql}") from None

    def _int(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse("int", value, self.sql)
        bits = _INT_BITS[self.name]
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise ValueError(f"{self.name} out of range")
        return value

    def _numeric(self, value: Any) -> decimal.Decimal:
        if isinstance(value, bool) or not isinstance(value, decimal.Decimal | int | float):
            raise _refuse("decimal.Decimal, int or float", value, self.sql)
        d = value if isinstance(value, decimal.Decimal) else decimal.Decimal(value)
        if d.is_nan():
            return decimal.Decimal("NaN")
        if self.precision is None:
            return d
        if d.is_infinite():
            raise ValueError(f"{self.sql} cannot hold an infinite value")
        scale = self.scale or 0
        q = d.quantize(decimal.Decimal(1).scaleb(-scale), context=wide_context())
        if q != 0 and q.adjusted() >= self.precision - scale:
            raise ValueError(f"numeric field overflow for {self.sql}")
        return q

    def _boolean(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _refuse("bool", value, self.sql)
        return value

    def _jsonb(self, value: Any) -> Any:
        return jsonb_document(json.dumps(value))  # what SQLAlchemy's JSONB type sends


def _in_utc(value: dt.datetime, sql: str) -> dt.datetime:
    try:
        return value.astimezone(_UTC)
    except OverflowError:  # e.g. 0001-01-01 00:00+05:30 is a year-0 instant in UTC
        raise ValueError(f"timestamp out of range for Python: {sql}") from None


def _numeric_out(vt: ValueType, d: decimal.Decimal) -> str:
    if vt.scale is not None and vt.scale < 0 and d.is_finite():
        d = d.quantize(decimal.Decimal(1), context=wide_context())
    return numeric_text(d)


def _ts_text(vt: ValueType, v: dt.datetime) -> str:
    if vt.name == "timestamptz":
        return v.astimezone(_UTC).isoformat(timespec="microseconds")
    return v.isoformat(timespec="microseconds")


_COERCE: dict[str, Callable[[ValueType, Any], Any]] = {
    "text": ValueType._text,
    "date": ValueType._date,
    "timestamp": ValueType._timestamp,
    "timestamptz": ValueType._timestamp,
    "smallint": ValueType._int,
    "integer": ValueType._int,
    "bigint": ValueType._int,
    "numeric": ValueType._numeric,
    "boolean": ValueType._boolean,
    "jsonb": ValueType._jsonb,
}
_TO_TEXT: dict[str, Callable[[ValueType, Any], str]] = {
    "text": lambda vt, v: v,
    "date": lambda vt, v: v.isoformat(),
    "timestamp": _ts_text,
    "timestamptz": _ts_text,
    "smallint": lambda vt, v: str(v),
    "integer": lambda vt, v: str(v),
    "bigint": lambda vt, v: str(v),
    "numeric": _numeric_out,
    "boolean": lambda vt, v: "true" if v else "false",
    "jsonb": lambda vt, v: jsonb_text(v),
}
_FROM_TEXT: dict[str, Callable[[ValueType, str], Any]] = {
    "text": lambda vt, s: s,
    "date": lambda vt, s: dt.date.fromisoformat(s),
    "timestamp": lambda vt, s: dt.datetime.fromisoformat(s),
    "timestamptz": lambda vt, s: dt.datetime.fromisoformat(s).astimezone(_UTC),
    "smallint": lambda vt, s: int(s),
    "integer": lambda vt, s: int(s),
    "bigint": lambda vt, s: int(s),
    "numeric": lambda vt, s: decimal.Decimal(s),
    "boolean": lambda vt, s: s == "true",
    "jsonb": lambda vt, s: json.loads(s),
}
