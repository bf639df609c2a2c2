"""``dualwrite revision`` input: the migration name, the table and each ``--field`` (pure).

>>> parse_field("email:search=email:unique")
FieldOption(name='email', search='email', unique=True)
>>> parse_field("date_of_birth:search")                # the kind follows the column type
FieldOption(name='date_of_birth', search='', unique=False)
>>> parse_field("email:serch")
Traceback (most recent call last):
    ...
dualwrite.errors.ConfigError: --field email:serch: unknown option 'serch' \
(expected COL[:search[=email|phone|text|exact]][:unique])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dualwrite.errors import ConfigError
from dualwrite.spec import SEARCH_KINDS

__all__ = ["FieldOption", "check_name", "parse_field", "parse_table"]

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")
_SYNTAX = "COL[:search[=email|phone|text|exact]][:unique]"


def check_name(what: str, value: str) -> str:
    """``value`` if it is a lower-case SQL identifier (at most 51 characters), else one line."""
    if not _IDENT.match(value or ""):
        raise ConfigError(
            f"{what} {value!r} is not a lower-case SQL identifier (letters, digits, _; "
            "at most 51 characters)"
        )
    return value


def parse_table(value: str) -> tuple[str | None, str]:
    """``[SCHEMA.]TABLE`` -> ``(schema or None, table)``."""
    parts = (value or "").split(".")
    if len(parts) > 2:
        raise ConfigError(f"--table {value!r} must be TABLE or SCHEMA.TABLE")
    names = [check_name("table name" if i == len(parts) - 1 else "schema", p)
             for i, p in enumerate(parts)]  # fmt: skip
    return (names[0], names[1]) if len(names) == 2 else (None, names[0])


@dataclass(frozen=True, slots=True)
class FieldOption:
    """One ``--field``: ``search`` is ``None`` (not searchable), ``""`` (the column type's
    default kind) or a kind."""

    name: str
    search: str | None = None
    unique: bool = False


def parse_field(value: str) -> FieldOption:
    name, *opts = (value or "").split(":")
    check_name("field", name)
    search: str | None = None
    unique = False
    for opt in opts:
        key, _, kind = opt.partition("=")
        if key == "search" and search is None:
            if kind and kind not in SEARCH_KINDS:
                raise ConfigError(
                    f"--field {value}: search kind {kind!r} must be one of "
                    + ", ".join(SEARCH_KINDS)
                )
            search = kind
        elif key == "unique" and not kind and not unique:
            unique = True
        else:
            raise ConfigError(f"--field {value}: unknown option {opt!r} (expected {_SYNTAX})")
    return FieldOption(name, search, unique)
