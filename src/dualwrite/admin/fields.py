"""Text rules that the OpenAPI schema states and the validation enforces with the same regex.

A schema is only truthful if what it allows is accepted, so a constraint is written once, as a
regular expression that means the same in Python's :mod:`re` and in the ECMA-262 dialect of
JSON Schema (plain character classes, ``\\uXXXX`` escapes, explicit anchors), and used for both
(:class:`Text`). "Blank" means Python's whitespace (:data:`WHITESPACE`, what ``str.strip`` removes).

PostgreSQL ``text`` cannot hold NUL and UTF-8 cannot hold a lone surrogate, so no text field
accepts either (:func:`storable`).

>>> import re
>>> bool(re.fullmatch(NOT_BLANK, " a ")), bool(re.fullmatch(NOT_BLANK, " \\u3000 "))
(True, False)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictBool,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

__all__ = [
    "JSON_NUMBER",
    "NOT_BLANK",
    "NO_NUL",
    "WHITESPACE",
    "JsonBool",
    "Text",
    "refuse_null",
    "schema_extra",
    "storable",
    "stripped",
]

WHITESPACE = (
    r"\t\n\u000b\u000c\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""A character class body: exactly the characters for which ``str.isspace()`` is true."""

NO_NUL = r"^[^\u0000]*$"
"""Any text without NUL."""

NOT_BLANK = rf"^[^\u0000]*[^\u0000{WHITESPACE}][^\u0000]*$"
"""Text without NUL holding at least one character that is not whitespace."""


def _json_number(value: Any) -> Any:
    if isinstance(value, bool | str):  # pydantic's lax mode would read true as 1, "1" as 1
        raise ValueError("must be a JSON number")
    return value


JSON_NUMBER = BeforeValidator(_json_number)
"""Last metadata of a number field (after its ``Field(ge=..)``, so the bounds stay in the schema):
a JSON number only — never ``true`` or ``"2"`` — as JSON Schema means it (``2.0`` is an
integer): ``Annotated[int, Field(ge=1), JSON_NUMBER]``."""
JsonBool = StrictBool
"""``true`` or ``false`` only."""


def storable(value: str) -> str:
    """Refuse a lone surrogate (not valid Unicode, cannot be stored as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (lone surrogate)") from None
    return value


def stripped(value: str) -> str:
    """``value`` without leading and trailing :data:`WHITESPACE`."""
    return value.strip()


@dataclass(frozen=True, slots=True)
class Text:
    """Metadata for ``Annotated[str, Text(...)]``: at most ``max_length`` characters matching
    ``pattern`` (documented as ``maxLength`` and ``pattern``, validated with the same regex),
    stripped of :data:`WHITESPACE` once valid when ``strip``.

    >>> from typing import Annotated
    >>> from pydantic import TypeAdapter
    >>> Name = Annotated[str, Text(5, pattern=NOT_BLANK, message="must not be blank", strip=True)]
    >>> TypeAdapter(Name).validate_python(" ab ")
    'ab'
    >>> TypeAdapter(Name).json_schema()["pattern"] == NOT_BLANK
    True
    """

    max_length: int
    pattern: str = NO_NUL
    message: str = "must not contain NUL characters"
    strip: bool = False

    def validate(self, value: str) -> str:
        storable(value)
        if not re.fullmatch(self.pattern, value):
            raise ValueError(self.message)
        return stripped(value) if self.strip else value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            self.validate, core_schema.str_schema(max_length=self.max_length)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out["pattern"] = self.pattern
        return out


def schema_extra(**extra: Any) -> Callable[[dict[str, Any]], None]:
    """A model's ``json_schema_extra``: add ``extra`` and drop ``"default": null`` of
    properties (a field that may be omitted but not sent as ``null`` must not advertise it).

    >>> hook = schema_extra(minProperties=1)
    >>> schema = {"properties": {"a": {"type": "string", "default": None}}}
    >>> hook(schema); schema
    {'properties': {'a': {'type': 'string'}}, 'minProperties': 1}
    """

    def hook(schema: dict[str, Any]) -> None:
        for prop in schema.get("properties", {}).values():
            if isinstance(prop, dict) and "default" in prop and prop["default"] is None:
                del prop["default"]
        schema.update(extra)

    return hook


def refuse_null(*fields: str, message: str) -> Any:
    """A model validator refusing an explicit ``null`` for ``fields`` (they may be omitted):
    ``_no_null = refuse_null("batch_size", message="must be a number")`` in the class body."""

    def check(cls: type, value: Any) -> Any:
        if value is None:
            raise ValueError(message)
        return value

    return field_validator(*fields, mode="before")(classmethod(check))
