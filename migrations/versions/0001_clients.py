"""Reference clients table, as it exists before encryption (plaintext PII/PHI).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE clients (
            id uuid PRIMARY KEY,
            workspace_id uuid NOT NULL,
            first_name varchar(200) NOT NULL,
            last_name varchar(200) NOT NULL,
            email varchar(320),
            phone varchar(50),
            address text,
            medical_history text,
            emergency_contact_name varchar(200),
            emergency_contact_phone varchar(50),
            is_active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_clients_workspace_lastname_firstname "
        "ON clients (workspace_id, last_name, first_name)"
    )
    op.execute("CREATE INDEX ix_clients_workspace_email ON clients (workspace_id, email)")
    op.execute("CREATE INDEX ix_clients_workspace_updated ON clients (workspace_id, updated_at)")
    op.execute("CREATE INDEX ix_clients_workspace_active ON clients (workspace_id, is_active)")
    # keyset pages of a workspace's active clients (GET /workspaces/{ws}/clients?after=...)
    op.execute(
        "CREATE INDEX ix_clients_workspace_id_active ON clients (workspace_id, id) WHERE is_active"
    )


def downgrade() -> None:
    op.execute("DROP TABLE clients")
