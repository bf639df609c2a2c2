"""The encryption migration of ``clinic.patients`` (as ``dualwrite revision`` froze it)."""

from __future__ import annotations

from dualwrite.spec import FieldSpec, MigrationSpec

PATIENTS_PII = MigrationSpec(
    name="patients_pii",
    table="clinic.patients",
    primary_key="id",
    scope_column="clinic_id",
    key_type="bigint",
    fields=(
        FieldSpec("full_name", "text", "text"),
        FieldSpec("email", "email", "character varying(320)", unique=True),
        FieldSpec("date_of_birth", "exact", "date"),
        FieldSpec("intake", None, "jsonb"),
        FieldSpec("balance", None, "numeric(10,2)"),
        FieldSpec("last_visit", None, "timestamp(3) with time zone"),
    ),
)
