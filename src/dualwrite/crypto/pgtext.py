"""PostgreSQL's text forms that the value codecs reproduce exactly (pure).

``numeric`` output (plain notation, no negative zero), timestamp rounding to a precision
(``AdjustTimestampForTypmod``), and the ``jsonb`` document a read returns for a JSON text.
"""

from __future__ import annotations

import decimal
import json
from typing import Any

__all__ = [
    "jsonb_document",
    "jsonb_number",
    "jsonb_text",
    "numeric_text",
    "round_micros",
    "wide_context",
]


def numeric_text(d: decimal.Decimal) -> str:
    """PostgreSQL's ``numeric`` text output of ``d``: plain notation, no negative zero."""
    if d.is_nan():
        return "NaN"
    if d.is_infinite():
        return "-Infinity" if d < 0 else "Infinity"
    if d.is_zero():
        d = d.copy_abs()
    return format(d, "f")


_WIDE = decimal.Context(prec=200_000, rounding=decimal.ROUND_HALF_UP, Emax=10**6, Emin=-(10**6))


def wide_context() -> decimal.Context:
    """A context wide enough for any ``numeric`` (rounding half away from zero, as PostgreSQL
    does); shared: only its flags change, and nothing reads them."""
    return _WIDE


def round_micros(us: int, precision: int) -> int:
    """PostgreSQL's ``AdjustTimestampForTypmod`` on microseconds since 2000-01-01."""
    if precision >= 6:
        return us
    scale: int = int(10 ** (6 - precision))
    half = scale // 2
    if us >= 0:
        return ((us + half) // scale) * scale
    return -(((-us + half) // scale) * scale)


def jsonb_number(token: str) -> int | float:
    """A JSON number as PostgreSQL stores it in ``jsonb`` (``numeric``), then as a read parses
    the stored text (an int without a fraction, a float otherwise)."""
    text = numeric_text(decimal.Decimal(token))
    return float(text) if "." in text else int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"jsonb refuses {name}")


def _check_strings(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("jsonb refuses the character U+0000")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def jsonb_document(text: str) -> Any:
    """The document a read returns for the JSON text ``text`` stored in a ``jsonb`` column."""
    doc = json.loads(
        text, parse_float=jsonb_number, parse_int=jsonb_number, parse_constant=_no_constant
    )
    _check_strings(doc)
    return doc


def jsonb_text(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
