"""The reference ``clients`` table and its encryption migration."""

from __future__ import annotations

from dualwrite.spec import FieldSpec, MigrationSpec

CLIENTS_PII = MigrationSpec(
    name="clients_pii",
    table="clients",
    scope_column="workspace_id",
    fields=(
        FieldSpec("first_name", type="character varying(200)"),
        FieldSpec("last_name", type="character varying(200)"),
        FieldSpec("email", blind_index="email", type="character varying(320)"),
        FieldSpec("phone", blind_index="phone", type="character varying(50)"),
        FieldSpec("address"),
        FieldSpec("medical_history"),
        FieldSpec("emergency_contact_name", type="character varying(200)"),
        FieldSpec("emergency_contact_phone", type="character varying(50)"),
    ),
)
"""The reference migration of ``clients``: 8 PII/PHI fields, email and phone searchable; each
field's type is its column's (``format_type``), so a rollback from ``finalized`` re-adds the
same columns."""
