"""Helpers for the clients API tests: a running app, phase changes, independent decryption."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.app import create_app
from clients_service.schema import CLIENTS_PII
from dualwrite.config import Settings
from dualwrite.metrics import Metrics
from dualwrite.phases import Phase
from dualwrite.state import registry
from tests.conftest import TEST_KEY_V1

TOKEN = "api-test-token"
FIELDS = CLIENTS_PII.field_names


@asynccontextmanager
async def running_app(
    settings: Settings, metrics: Metrics | None = None, token: str | None = TOKEN
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app with its lifespan running, and an HTTP client speaking to it."""
    app = create_app(settings, metrics=metrics)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://clients.test", headers=headers
        ) as client:
            yield app, client


async def set_phase(engine: AsyncEngine, app: FastAPI, phase: Phase) -> None:
    """Move clients_pii straight to ``phase`` (no guards) and make the app observe it."""
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, CLIENTS_PII.name)
        if state.phase is not phase:
            state = await registry.compare_and_swap_phase(conn, state.name, state.version, phase)
            await registry.notify_phase(conn, state)
    await app.state.watcher.refresh()
    assert app.state.watcher.state(CLIENTS_PII.name).phase is phase


def aad(version: str, table: str, column: str, row_key: str) -> bytes:
    """DESIGN §3 associated data, computed here independently of dualwrite.crypto."""

    def part(s: str) -> bytes:
        raw = s.encode()
        return len(raw).to_bytes(2, "big") + raw

    return b"dualwrite.v1" + part(version) + part(table) + part(column) + part(row_key)


def decrypt_v1(ciphertext: bytes, column: str, row_key: str) -> str:
    """Decrypt a stored value with the v1 test key, without dualwrite code."""
    data = bytes(ciphertext)
    assert data.startswith(b"v1:"), data[:4]
    nonce, body = data[3:15], data[15:]
    key = base64.b64decode(TEST_KEY_V1)
    return AESGCM(key).decrypt(nonce, body, aad("v1", "clients", column, row_key)).decode()


async def raw_rows(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    """Every clients row as stored, by id."""
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT * FROM clients"))
        return {str(r._mapping["id"]): dict(r._mapping) for r in rows}


async def encrypt_missing(engine: AsyncEngine, app: FastAPI) -> int:
    """What the backfiller's encrypt mode does, via the public per-field encoder: rows
    whose ciphertext or blind index is missing get them (plaintext untouched)."""
    codec = app.state.codec
    done = 0
    for row_id, row in (await raw_rows(engine)).items():
        sets: dict[str, Any] = {}
        for f in CLIENTS_PII.fields:
            value = row[f.plaintext_column]
            if value is None or row[f.ciphertext_column] is not None:
                continue
            ct, bidx = codec.encode_field(f.name, value, row_id)
            sets[f.ciphertext_column] = ct
            if f.bidx_column:
                sets[f.bidx_column] = bidx
        if sets:
            assignments = ", ".join(f"{c} = :{c}" for c in sets)
            async with engine.begin() as conn:
                await conn.execute(
                    text(f"UPDATE clients SET {assignments} WHERE id = :id"),
                    {**sets, "id": uuid.UUID(row_id)},
                )
            done += 1
    return done


async def purge_plaintext(engine: AsyncEngine) -> None:
    """Contract's purge: NULL every plaintext, keeping the ciphertext (trigger told so)."""
    nulls = ", ".join(f"{f} = NULL" for f in FIELDS)
    async with engine.begin() as conn:
        await conn.execute(text("SELECT set_config('dualwrite.keep_ciphertext', 'on', true)"))
        await conn.execute(text(f"UPDATE clients SET {nulls}"))


def new_client(i: int) -> dict[str, Any]:
    return {
        "first_name": f"Ada{i}",
        "last_name": f"Lovelace{i}",
        "email": f"ada{i}@example.org",
        "phone": f"+1 555 010 {i:04d}",
        "address": f"{i} Analytical St",
        "medical_history": f"notes {i}",
        "emergency_contact_name": None,
        "emergency_contact_phone": "+1 555 999 0000",
    }


async def flip_byte(engine: AsyncEngine, row_id: str, column: str, index: int) -> None:
    """Tamper with one stored ciphertext: flip the lowest bit of one byte."""
    async with engine.begin() as conn:
        key = {"i": uuid.UUID(row_id)}
        stored = bytearray(
            (
                await conn.execute(text(f"SELECT {column} FROM clients WHERE id = :i"), key)
            ).scalar_one()
        )
        stored[index] ^= 1
        await conn.execute(
            text(f"UPDATE clients SET {column} = :v WHERE id = :i"), {**key, "v": bytes(stored)}
        )


async def seed_legacy_rows(engine: AsyncEngine, n: int, workspace: uuid.UUID) -> None:
    """Rows written by the application before dualwrite: plaintext only."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO clients (id, workspace_id, first_name, last_name, email, phone, "
                "address, medical_history) SELECT gen_random_uuid(), :ws, 'Ada' || i, "
                "'Lovelace' || i, 'ada' || i || '@example.org', '+1 555 010 ' || i, "
                "i || ' Analytical St', 'notes ' || i FROM generate_series(1, :n) AS i"
            ),
            {"ws": workspace, "n": n},
        )
