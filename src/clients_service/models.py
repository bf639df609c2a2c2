"""Request and response bodies of the clients API, with the input limits.

Limits (characters): names 200, email 320, phone 50, address 1000, medical history 100 000,
emergency contact name 200 / phone 50. Text must be valid Unicode without NUL characters (what
PostgreSQL ``text`` and UTF-8 can store). ``first_name`` and ``last_name`` are required on
create and cannot be cleared; the other fields may be ``null``. Unknown fields are refused.
Every rule is stated in the OpenAPI schema with the regex the validation uses
(:mod:`dualwrite.admin.fields`), so a body the schema allows is accepted. Names, email and
phone numbers are stripped of surrounding whitespace once valid.

>>> ClientCreate(first_name="Ada", last_name="Lovelace", email=" ada@example.com ").email
'ada@example.com'
>>> ClientPatch(phone=None).changes()
{'phone': None}
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from dualwrite.admin.fields import NO_NUL, NOT_BLANK, WHITESPACE, Text, refuse_null, schema_extra

LIMITS: dict[str, int] = {
    "first_name": 200,
    "last_name": 200,
    "email": 320,
    "phone": 50,
    "address": 1000,
    "medical_history": 100_000,
    "emergency_contact_name": 200,
    "emergency_contact_phone": 50,
}
"""Maximum length in characters of each field (of the value as sent, spaces included)."""

_NOT_WS_NUL_AT = rf"[^@\u0000{WHITESPACE}]"
EMAIL_PATTERN = rf"^[{WHITESPACE}]*{_NOT_WS_NUL_AT}+@{_NOT_WS_NUL_AT}+[{WHITESPACE}]*$"
"""Something@something, no spaces inside (surrounding whitespace is stripped)."""
PHONE_PATTERN = rf"^[{WHITESPACE}]*[0-9+().\-/ ]*[0-9][0-9+().\-/ x]*[{WHITESPACE}]*$"
"""Digits, spaces and ``+ ( ) - . /`` (and ``x`` for an extension after the first digit)."""

Name = Annotated[str, Text(200, pattern=NOT_BLANK, message="must not be blank", strip=True)]
OptName = Annotated[str, Text(200, pattern=NO_NUL, strip=True)]
Email = Annotated[
    str, Text(320, pattern=EMAIL_PATTERN, message="is not an email address", strip=True)
]
Phone = Annotated[
    str,
    Text(
        50,
        pattern=PHONE_PATTERN,
        message="is not a phone number (digits, spaces and + ( ) - . / only)",
        strip=True,
    ),
]
Address = Annotated[str, Text(1000)]
History = Annotated[str, Text(100_000)]


class ClientFields(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=schema_extra())


class ClientCreate(ClientFields):
    """``POST /workspaces/{ws}/clients``."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            examples=[
                {
                    "first_name": "Ada",
                    "last_name": "Lovelace",
                    "email": "ada@example.org",
                    "phone": "+44 20 7946 0958",
                    "address": "12 Analytical St, London",
                    "medical_history": "no known allergies",
                    "emergency_contact_name": "Charles Babbage",
                    "emergency_contact_phone": "+44 20 7946 0000",
                }
            ]
        )
    )

    first_name: Name
    last_name: Name
    email: Email | None = None
    phone: Phone | None = None
    address: Address | None = None
    medical_history: History | None = None
    emergency_contact_name: OptName | None = None
    emergency_contact_phone: Phone | None = None


_REQUIRED_NAMES = ("first_name", "last_name")


class ClientPatch(ClientFields):
    """``PATCH /workspaces/{ws}/clients/{id}``: only the fields given change (``null`` clears;
    ``first_name`` and ``last_name`` cannot be cleared, so they are never ``null``)."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            minProperties=1, examples=[{"phone": "+44 20 7946 0001", "address": None}]
        )
    )
    first_name: Name | SkipJsonSchema[None] = None
    last_name: Name | SkipJsonSchema[None] = None
    email: Email | None = None
    phone: Phone | None = None
    address: Address | None = None
    medical_history: History | None = None
    emergency_contact_name: OptName | None = None
    emergency_contact_phone: Phone | None = None

    _not_cleared = refuse_null(*_REQUIRED_NAMES, message="cannot be cleared")

    @model_validator(mode="after")
    def _check(self) -> ClientPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self

    def changes(self) -> dict[str, str | None]:
        """The fields the request sets, with their new values."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class Client(BaseModel):
    """A client as every route returns it."""

    id: uuid.UUID
    workspace_id: uuid.UUID
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    address: str | None
    medical_history: str | None
    emergency_contact_name: str | None
    emergency_contact_phone: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime


class ClientPage(BaseModel):
    """One keyset page: pass ``next_after`` as ``after`` to get the next one (``null``: done)."""

    items: list[Client]
    next_after: uuid.UUID | None = Field(default=None)


class SearchResult(BaseModel):
    items: list[Client]
