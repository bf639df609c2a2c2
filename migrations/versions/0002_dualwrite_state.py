"""dualwrite state tables: migrations (phase), audit, heartbeats, checkpoints, results.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from dualwrite.schema import ops as schema_ops

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema_ops.create_state_tables()


def downgrade() -> None:
    schema_ops.drop_state_tables()
