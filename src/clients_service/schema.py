"""The reference ``clients`` table and its encryption migration."""

from __future__ import annotations

from dualwrite.spec import FieldSpec, MigrationSpec

CLIENTS_PII = MigrationSpec(
    name="clients_pii",
    table="clients",
    scope_column="workspace_id",
    fields=(
        FieldSpec("first_name"),
        FieldSpec("last_name"),
        FieldSpec("email", blind_index="email"),
        FieldSpec("phone", blind_index="phone"),
        FieldSpec("address"),
        FieldSpec("medical_history"),
        FieldSpec("emergency_contact_name"),
        FieldSpec("emergency_contact_phone"),
    ),
)
"""The reference migration of ``clients``: 8 PII/PHI fields, email and phone searchable."""
