"""The example clinic app's table on a test database, and an independent decryption of it."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ROOT, TEST_KEY_V1
from tests.integration.clients_support import aad  # DESIGN §3, independent of dualwrite

CLINIC = ROOT / "examples" / "clinic"
if str(CLINIC) not in sys.path:
    sys.path.insert(0, str(CLINIC))

from clinic_app.schema import PATIENTS_PII  # noqa: E402

from dualwrite.phases import Phase  # noqa: E402
from dualwrite.schema import ops  # noqa: E402
from dualwrite.schema import sql as schema_sql  # noqa: E402
from dualwrite.state import registry  # noqa: E402

SCHEMA_SQL = (CLINIC / "sql" / "schema.sql").read_text()


CONTRACT_DROPS = {
    "drop_indexes": ("ix_patients_clinic_dob",),
    "drop_constraints": ("uq_patients_clinic_email",),
}
"""What the clinic's contract revision drops before the plaintext columns (as generated)."""


def run_ops(
    sync_conn: Connection, fn: Any, *args: Any, allow_contract: bool = False, **kw: Any
) -> None:
    """Run a :mod:`dualwrite.schema.ops` operation outside an Alembic revision, on a
    connection outside any transaction (its steps run in autocommit mode, each in its own
    short transaction); ``allow_contract`` is what ``dualwrite finalize`` sets."""
    from alembic.config import Config
    from alembic.operations import Operations
    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationContext

    cfg = Config()
    cfg.attributes[ops.ALLOW_CONTRACT] = allow_contract
    env = EnvironmentContext(cfg, None)  # type: ignore[arg-type]
    ctx = MigrationContext.configure(sync_conn, environment_context=env)
    with Operations.context(ctx):
        fn(*args, **kw)


async def create_clinic_schema(engine: AsyncEngine, *, expand: bool = True) -> None:
    async with engine.begin() as conn:
        for statement in SCHEMA_SQL.split(";"):
            if statement.strip():
                await conn.execute(text(statement))
    if expand:
        async with engine.connect() as conn:
            await conn.run_sync(run_ops, ops.expand, PATIENTS_PII)


async def move_to(engine: AsyncEngine, phase: Phase) -> None:
    """Set the phase row straight to ``phase`` (no guards); ``finalized`` drops the plaintext
    columns the way the contract revision does."""
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, PATIENTS_PII.name)
        if state.phase is not phase:
            state = await registry.compare_and_swap_phase(conn, state.name, state.version, phase)
            await registry.notify_phase(conn, state)
        if phase is Phase.FINALIZED:
            await conn.execute(text(schema_sql.keep_ciphertext_sql()))
            nulls = ", ".join(f'"{f}" = NULL' for f in PATIENTS_PII.field_names)
            await conn.execute(text(f"UPDATE clinic.patients SET {nulls}"))
            for statement in schema_sql.contract_ddl(PATIENTS_PII):
                await conn.execute(text(statement))


def decrypt_independently(ciphertext: bytes, column: str, row_key: int) -> str:
    """AES-GCM straight from ``cryptography``: schema-qualified table, integer row key."""
    data = bytes(ciphertext)
    assert data.startswith(b"v1:")
    aead = AESGCM(base64.b64decode(TEST_KEY_V1))
    plain = aead.decrypt(data[3:15], data[15:], aad("v1", "clinic.patients", column, str(row_key)))
    return plain.decode()


__all__ = [
    "CLINIC",
    "CONTRACT_DROPS",
    "PATIENTS_PII",
    "Path",
    "create_clinic_schema",
    "decrypt_independently",
    "move_to",
    "run_ops",
]
