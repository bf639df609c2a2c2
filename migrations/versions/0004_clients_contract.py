"""Contract: drop the plaintext columns of clients (runs only through ``dualwrite finalize``).

Refuses unless migration ``clients_pii`` is in ``contract``. Drops the two indexes of the
reference schema that index plaintext (they hold only NULLs after the purge) concurrently,
fences the plaintext (``CHECK (... IS NULL)``, validated: a late legacy write fails instead of
vanishing), swaps the stale guard for the key guard and drops the columns. Downgrade re-adds
the columns (nullable, same types), the stale guard and the two indexes; ``dualwrite backfill
--mode decrypt`` then restores the values.

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
dualwrite_migration = "clients_pii"

PLAINTEXT_INDEXES = ("ix_clients_workspace_email", "ix_clients_workspace_lastname_firstname")


def upgrade() -> None:
    schema_ops.contract(CLIENTS_PII, drop_indexes=PLAINTEXT_INDEXES)


def downgrade() -> None:
    schema_ops.uncontract(CLIENTS_PII)
