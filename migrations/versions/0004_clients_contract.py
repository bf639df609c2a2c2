"""Contract: drop the plaintext columns of clients (runs only through ``dualwrite finalize``).

Refuses unless migration ``clients_pii`` is in ``contract`` with every plaintext purged.
Downgrade re-adds the columns (nullable) and the stale guard; ``dualwrite backfill --mode
decrypt`` then restores the values.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from clients_service.schema import CLIENTS_PII
from dualwrite.schema import ops as schema_ops

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

dualwrite_contract = True


def upgrade() -> None:
    schema_ops.contract(CLIENTS_PII)


def downgrade() -> None:
    schema_ops.uncontract(CLIENTS_PII)
