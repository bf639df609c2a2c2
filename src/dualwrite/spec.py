"""What one migration encrypts: a table, its primary key and a set of text fields (pure).

A :class:`MigrationSpec` is shared by every part: the expand/contract schema operations, the ORM
integration, the backfiller and the verifier. It derives every column name from the field name
so all parts agree:

>>> spec = MigrationSpec(
...     name="clients_pii", table="clients",
...     fields=(FieldSpec("email", blind_index="email"), FieldSpec("first_name")),
... )
>>> spec.field("email").ciphertext_column, spec.field("email").bidx_column
('email_encrypted', 'email_bidx')
>>> spec.field("first_name").bidx_column is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

BlindIndexKind = Literal["email", "phone", "text"]

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


def _check_identifier(what: str, value: str) -> None:
    if not _IDENT.fullmatch(value):  # fullmatch: "$" alone would let a trailing newline in
        raise ValueError(
            f"{what} {value!r} must be a lower-case SQL identifier of at most 51 chars"
        )


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One encrypted text field.

    ``name`` is the logical name (the plaintext column and the associated-data column name);
    ``blind_index`` names the normalisation of a searchable field, or ``None``.
    """

    name: str
    blind_index: BlindIndexKind | None = None

    def __post_init__(self) -> None:
        _check_identifier("field", self.name)

    @property
    def plaintext_column(self) -> str:
        return self.name

    @property
    def ciphertext_column(self) -> str:
        return f"{self.name}_encrypted"

    @property
    def bidx_column(self) -> str | None:
        return f"{self.name}_bidx" if self.blind_index else None


@dataclass(frozen=True, slots=True)
class MigrationSpec:
    """One migration: one table, its primary key column and its encrypted fields."""

    name: str
    table: str
    fields: tuple[FieldSpec, ...]
    primary_key: str = "id"
    scope_column: str | None = None
    """Tenant column (e.g. ``workspace_id``) that leads the blind-index indexes, if any."""
    _by_name: dict[str, FieldSpec] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        _check_identifier("migration", self.name)
        _check_identifier("table", self.table)
        _check_identifier("primary key", self.primary_key)
        if self.scope_column is not None:
            _check_identifier("scope column", self.scope_column)
        if not self.fields:
            raise ValueError("a migration needs at least one field")
        for f in self.fields:
            if f.name in self._by_name:
                raise ValueError(f"field {f.name!r} listed twice")
            self._by_name[f.name] = f

    def field(self, name: str) -> FieldSpec:
        return self._by_name[name]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def searchable(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.blind_index)

    def to_json(self) -> dict[str, Any]:
        """The form stored in ``dualwrite_migrations.spec``."""
        return {
            "name": self.name,
            "table": self.table,
            "primary_key": self.primary_key,
            "scope_column": self.scope_column,
            "fields": [{"name": f.name, "blind_index": f.blind_index} for f in self.fields],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MigrationSpec:
        return cls(
            name=data["name"],
            table=data["table"],
            primary_key=data.get("primary_key", "id"),
            scope_column=data.get("scope_column"),
            fields=tuple(FieldSpec(f["name"], f.get("blind_index")) for f in data["fields"]),
        )
