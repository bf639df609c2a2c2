"""The ``clients`` table as the application sees it: plain attribute names only.

The ciphertext and blind-index columns are added by :class:`dualwrite.runtime.table.EncryptedTable`
from :data:`clients_service.schema.CLIENTS_PII`; the application never names them.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, MetaData, Table, Text, Uuid

metadata = MetaData()

CLIENTS = Table(
    "clients",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("workspace_id", Uuid, nullable=False),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("email", Text),
    Column("phone", Text),
    Column("address", Text),
    Column("medical_history", Text),
    Column("emergency_contact_name", Text),
    Column("emergency_contact_phone", Text),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
"""Columns of revision 0001 (the plaintext PII/PHI columns keep their names)."""
