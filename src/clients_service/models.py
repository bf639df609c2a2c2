"""Request and response bodies of the clients API, with the input limits.

Limits (characters): names 200, email 320, phone 50, address 1000, medical history 100 000,
emergency contact name 200 / phone 50. Text must be valid Unicode without NUL characters (what
PostgreSQL ``text`` and UTF-8 can store). ``first_name`` and ``last_name`` are required on
create and cannot be cleared; the other fields may be ``null``. Unknown fields are refused.

>>> ClientCreate(first_name="Ada", last_name="Lovelace", email=" ada@example.com ").email
'ada@example.com'
>>> ClientPatch(phone=None).changes()
{'phone': None}
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

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
"""Maximum length in characters of each field."""

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_PHONE = re.compile(r"[0-9+().\-/ ]*[0-9][0-9+().\-/ x]*")


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (lone surrogate)") from None
    return value


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("is not an email address")
    return value


def _phone(value: str) -> str:
    if not _PHONE.fullmatch(value):
        raise ValueError("is not a phone number (digits, spaces and + ( ) - . / only)")
    return value


_Storable = AfterValidator(_storable)
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), _Storable
]
OptName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), _Storable] | None
Email = (
    Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=320),
        _Storable,
        AfterValidator(_email),
    ]
    | None
)
Phone = (
    Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=50),
        _Storable,
        AfterValidator(_phone),
    ]
    | None
)
Address = Annotated[str, StringConstraints(max_length=1000), _Storable] | None
History = Annotated[str, StringConstraints(max_length=100_000), _Storable] | None


class ClientFields(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ClientCreate(ClientFields):
    """``POST /workspaces/{ws}/clients``."""

    first_name: Name
    last_name: Name
    email: Email = None
    phone: Phone = None
    address: Address = None
    medical_history: History = None
    emergency_contact_name: OptName = None
    emergency_contact_phone: Phone = None


class ClientPatch(ClientFields):
    """``PATCH /workspaces/{ws}/clients/{id}``: only the fields given change (``null`` clears)."""

    first_name: Name | None = None
    last_name: Name | None = None
    email: Email = None
    phone: Phone = None
    address: Address = None
    medical_history: History = None
    emergency_contact_name: OptName = None
    emergency_contact_phone: Phone = None

    @model_validator(mode="after")
    def _check(self) -> ClientPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        for name in ("first_name", "last_name"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be cleared")
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
