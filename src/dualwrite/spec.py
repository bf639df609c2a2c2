"""What one migration encrypts: a table, its primary key and a set of typed fields (pure).

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

A table outside ``public`` is named ``schema.table``; the associated data uses the logical name
frozen here at registration (DESIGN.md section 3): the bare name for ``public``,
``schema.table`` otherwise. It is stored with the spec, so renaming or moving the table later
does not change it (a partition's migration names its parent's):

>>> moved = MigrationSpec("p_pii", "clinic.patients", (FieldSpec("dob", "exact", "date"),))
>>> moved.aad_table, moved.sql_table, MigrationSpec("q", "public.q", spec.fields).aad_table
('clinic.patients', '"clinic"."patients"', 'q')
>>> MigrationSpec.from_json(moved.to_json()) == moved
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from dualwrite.crypto.values import ValueType, value_type

BlindIndexKind = Literal["email", "phone", "text", "exact"]
SEARCH_KINDS: tuple[str, ...] = ("email", "phone", "text", "exact")

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


def _check_identifier(what: str, value: str) -> None:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):  # fullmatch: no trailing newline
        raise ValueError(
            f"{what} {value!r} must be a lower-case SQL identifier of at most 51 chars"
        )


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (every identifier dualwrite emits is quoted).

    >>> quote_ident("user"), quote_ident('a"b')
    ('"user"', '"a""b"')
    """
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One encrypted field.

    ``name`` is the logical name (the plaintext column and the associated-data column name);
    ``blind_index`` names the normalisation of a searchable field (``email``, ``phone``,
    ``text`` or ``exact``), or ``None``; ``type`` is the column's SQL type as ``format_type``
    prints it, captured at registration (values are encrypted as PostgreSQL stores them, see
    :mod:`dualwrite.crypto.values`); ``unique`` keeps a UNIQUE constraint's equality through an
    HMAC of the exact value in ``<name>_uidx``.
    """

    name: str
    blind_index: BlindIndexKind | None = None
    type: str = "text"
    unique: bool = False

    def __post_init__(self) -> None:
        _check_identifier("field", self.name)
        if self.blind_index is not None and self.blind_index not in SEARCH_KINDS:
            raise ValueError(
                f"field {self.name}: search kind {self.blind_index!r} must be one of "
                + ", ".join(SEARCH_KINDS)
            )
        vt = self.value_type  # refuses unsupported types
        if self.blind_index in ("email", "phone", "text") and vt.name != "text":
            raise ValueError(
                f"field {self.name}: search={self.blind_index} needs a text column "
                f"({vt.sql} is searched with search=exact)"
            )
        if self.unique and vt.name == "jsonb":
            raise ValueError(f"field {self.name}: unique is not supported on jsonb")

    @property
    def value_type(self) -> ValueType:
        """How this field's values are coerced and written as canonical text."""
        return value_type(self.type)

    @property
    def search(self) -> str | None:
        """The blind-index kind (``blind_index``), or ``None``."""
        return self.blind_index

    @property
    def plaintext_column(self) -> str:
        return self.name

    @property
    def ciphertext_column(self) -> str:
        return f"{self.name}_encrypted"

    @property
    def bidx_column(self) -> str | None:
        return f"{self.name}_bidx" if self.blind_index else None

    @property
    def uidx_column(self) -> str | None:
        """``<name>_uidx``: the HMAC of the exact value of a ``unique`` field."""
        return f"{self.name}_uidx" if self.unique else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "blind_index": self.blind_index}
        if self.type != "text":
            out["type"] = self.type
        if self.unique:
            out["unique"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FieldSpec:
        return cls(
            data["name"],
            data.get("blind_index"),
            data.get("type", "text"),
            bool(data.get("unique", False)),
        )


@dataclass(frozen=True, slots=True)
class MigrationSpec:
    """One migration: one table (``table`` or ``schema.table``), its primary key column and its
    encrypted fields. ``aad_table`` (default: derived from ``table``, see the module docstring)
    is the table name bound into every ciphertext; ``key_type`` the primary key's SQL type at
    registration (informative)."""

    name: str
    table: str
    fields: tuple[FieldSpec, ...]
    primary_key: str = "id"
    scope_column: str | None = None
    """Tenant column (e.g. ``workspace_id``) that leads the blind-index indexes, if any."""
    aad_table: str = ""
    key_type: str | None = None
    _by_name: dict[str, FieldSpec] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        _check_identifier("migration", self.name)
        if not isinstance(self.table, str) or self.table.count(".") > 1:
            raise ValueError(f"table {self.table!r} must be TABLE or SCHEMA.TABLE")
        for part in self.table.split("."):
            _check_identifier("table", part)
        if not self.aad_table:
            bare = self.table.removeprefix("public.")
            object.__setattr__(self, "aad_table", bare)
        for part in self.aad_table.split("."):
            _check_identifier("associated-data table name", part)
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
    def schema(self) -> str | None:
        """The schema named in ``table``, or ``None`` (the search path decides)."""
        return self.table.split(".")[0] if "." in self.table else None

    @property
    def table_name(self) -> str:
        """The bare table name (derived names, e.g. the guard function, start from it)."""
        return self.table.rsplit(".", 1)[-1]

    @property
    def sql_table(self) -> str:
        """The table as emitted in SQL: every part quoted (``"clinic"."patients"``)."""
        return ".".join(quote_ident(p) for p in self.table.split("."))

    @property
    def unique_fields(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.unique)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def searchable(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.blind_index)

    def to_json(self) -> dict[str, Any]:
        """The form stored in ``dualwrite_migrations.spec``."""
        out: dict[str, Any] = {
            "name": self.name,
            "table": self.table,
            "aad_table": self.aad_table,
            "primary_key": self.primary_key,
            "scope_column": self.scope_column,
            "fields": [f.to_json() for f in self.fields],
        }
        if self.key_type is not None:
            out["key_type"] = self.key_type
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MigrationSpec:
        """The stored form back; specs stored by older versions (no ``aad_table``, no field
        types) read as text fields bound to the table name they were registered with."""
        return cls(
            name=data["name"],
            table=data["table"],
            primary_key=data.get("primary_key", "id"),
            scope_column=data.get("scope_column"),
            fields=tuple(FieldSpec.from_json(f) for f in data["fields"]),
            aad_table=data.get("aad_table") or "",
            key_type=data.get("key_type"),
        )
