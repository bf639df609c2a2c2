"""Expand: ciphertext and blind-index columns on clients, stale-ciphertext guard, registration.

Adds ``<field>_encrypted bytea`` for the 8 PII/PHI fields, ``email_bidx``/``phone_bidx`` with
``(workspace_id, *_bidx)`` indexes built concurrently, the trigger that clears a ciphertext
whenever a writer changes plaintext alone, and registers migration ``clients_pii`` in phase
``plaintext``.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from clients_service.schema import CLIENTS_PII
from dualwrite.schema import ops as schema_ops

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema_ops.expand(CLIENTS_PII)


def downgrade() -> None:
    schema_ops.unexpand(CLIENTS_PII)
