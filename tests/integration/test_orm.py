"""dualwrite.runtime.table on real PostgreSQL: phase-aware columns, one query per bulk read, search,
fallback, shadow reads, decrypt failures, refusal to write without keys."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.tables import CLIENTS
from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
from dualwrite.errors import DecryptionError, EncryptionUnavailableError
from dualwrite.metrics import Metrics
from dualwrite.phases import Phase, behaviour
from dualwrite.runtime.codec import FieldCodec, read_columns
from dualwrite.runtime.table import EncryptedTable
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1

KEYRING = Keyring([DataKey("v1", base64.b64decode(TEST_KEY_V1))])
BIDX = BlindIndex(base64.b64decode(TEST_BIDX_KEY))


class Events:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count_read_event(self, name: str, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


def make_table(**kw: Any) -> tuple[EncryptedTable, Metrics, Events]:
    metrics, events = Metrics(), Events()
    codec = FieldCodec(
        CLIENTS_PII,
        kw.pop("cipher", FieldCipher(KEYRING)),
        kw.pop("bidx", BIDX),
        metrics,
        events=events,
        **kw,
    )
    return EncryptedTable(CLIENTS, codec), metrics, events


def person(ws: uuid.UUID, i: int = 0) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "workspace_id": ws,
        "first_name": f"Ada{i}",
        "last_name": "Lovelace",
        "email": f"Ada{i}@Example.com",
        "phone": f"+1 555 010 {i:04d}",
        "address": "1 Main St",
        "medical_history": "none",
        "emergency_contact_name": None,
        "emergency_contact_phone": None,
    }


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.FINALIZED])
async def test_write_and_read_columns_per_phase(engine: AsyncEngine, phase: Phase) -> None:
    enc, _, _ = make_table()
    b = behaviour(phase)
    ws = uuid.uuid4()
    values = person(ws)
    async with engine.begin() as conn:
        created = await enc.insert(conn, b, values)
        assert created["email"] == values["email"] and created["is_active"] is True
        raw = (
            (await conn.execute(text("SELECT * FROM clients WHERE id = :i"), {"i": values["id"]}))
            .one()
            ._mapping
        )
        for f in CLIENTS_PII.fields:
            stored_pt = raw[f.plaintext_column]
            assert stored_pt == (values[f.name] if b.writes_plaintext else None)
            ct = raw[f.ciphertext_column]
            if b.writes_ciphertext and values[f.name] is not None:
                assert bytes(ct).startswith(b"v1:")
                assert (
                    FieldCipher(KEYRING).decrypt(
                        ct, table="clients", column=f.name, row_key=str(values["id"])
                    )
                    == values[f.name]
                )
            else:
                assert ct is None
        got = await enc.fetch(conn, b, enc.c.id == values["id"])
        assert {k: got[0][k] for k in values} == values
        updated = await enc.update(conn, b, values["id"], {"email": "new@example.com"})
        assert updated is not None and updated["email"] == "new@example.com"
        assert updated["first_name"] == values["first_name"]


def test_columns_selected_follow_the_phase() -> None:
    enc, _, _ = make_table()
    names = {p: set(enc.columns_for(behaviour(p))[1]) for p in Phase}
    assert "email" in names[Phase.DUAL_WRITE] and "email_encrypted" not in names[Phase.DUAL_WRITE]
    assert {"email", "email_encrypted"} <= names[Phase.BACKFILL]
    assert "email" not in names[Phase.FINALIZED] and "email_encrypted" in names[Phase.FINALIZED]
    assert read_columns(CLIENTS_PII, behaviour(Phase.FINALIZED)) == tuple(
        f.ciphertext_column for f in CLIENTS_PII.fields
    )


async def test_bulk_read_is_one_query(engine: AsyncEngine) -> None:
    enc, metrics, _ = make_table()
    b = behaviour(Phase.READ_SWITCH)
    ws = uuid.uuid4()
    rows = [person(ws, i) for i in range(150)]
    async with engine.begin() as conn:
        await conn.execute(enc.table.insert(), [enc.insert_params(b, r) for r in rows])
    with count_statements(engine) as seen:
        async with engine.connect() as conn:
            got = await enc.fetch(conn, b, enc.c.workspace_id == ws, order_by=enc.c.id)
    assert len(got) == 150 and len(seen) == 1
    by_id = {r["id"]: r for r in rows}
    assert all(g["email"] == by_id[g["id"]]["email"] for g in got)
    # one timer observation per decoded statement (the mean per row), not one per row
    assert (
        metrics.value("dualwrite_crypto_operation_duration_seconds_count", operation="decrypt") == 1
    )


async def test_limited_page_picks_keys_first_in_one_query(engine: AsyncEngine) -> None:
    enc, _, _ = make_table()
    b = behaviour(Phase.READ_SWITCH)
    ws, other = uuid.uuid4(), uuid.uuid4()
    rows = [person(ws, i) for i in range(12)] + [person(other, i) for i in range(12)]
    async with engine.begin() as conn:
        await conn.execute(enc.table.insert(), [enc.insert_params(b, r) for r in rows])
    mine = sorted(r["id"] for r in rows if r["workspace_id"] == ws)
    with count_statements(engine) as seen:
        async with engine.connect() as conn:
            got = await enc.fetch(
                conn, b, enc.c.workspace_id == ws, enc.c.id > mine[2], order_by=enc.c.id, limit=5
            )
    assert len(seen) == 1 and " IN (SELECT " in seen[0]
    assert [g["id"] for g in got] == mine[3:8]
    by_id = {r["id"]: r for r in rows}
    assert all(g["email"] == by_id[g["id"]]["email"] for g in got)


async def test_fallback_and_stale_guard(engine: AsyncEngine) -> None:
    enc, metrics, events = make_table()
    ws = uuid.uuid4()
    values = person(ws)
    async with engine.begin() as conn:
        await enc.insert(conn, behaviour(Phase.DUAL_WRITE), values)
        # an old app version changes plaintext alone: the trigger clears the ciphertext
        await conn.execute(
            text("UPDATE clients SET email = 'old@app.io' WHERE id = :i"), {"i": values["id"]}
        )
        raw = (
            await conn.execute(
                text(
                    "SELECT email_encrypted, email_bidx, phone_encrypted FROM clients WHERE id = :i"
                ),
                {"i": values["id"]},
            )
        ).one()
        assert (
            raw.email_encrypted is None
            and raw.email_bidx is None
            and raw.phone_encrypted is not None
        )
        got = await enc.fetch(conn, behaviour(Phase.READ_SWITCH), enc.c.id == values["id"])
    assert got[0]["email"] == "old@app.io"
    assert (
        metrics.value("dualwrite_read_fallback_total", migration="clients_pii", field="email") == 1
    )
    assert events.counts == {"read_fallback": 1}


async def test_search_clause_per_phase(engine: AsyncEngine) -> None:
    enc, _, _ = make_table()
    ws = uuid.uuid4()
    legacy, dual = person(ws, 1), person(ws, 2)
    async with engine.begin() as conn:
        await enc.insert(conn, behaviour(Phase.PLAINTEXT), legacy)  # no blind index yet
        await enc.insert(conn, behaviour(Phase.DUAL_WRITE), dual)
        for phase in (Phase.DUAL_WRITE, Phase.BACKFILL, Phase.READ_SWITCH):
            b = behaviour(phase)
            for row, query in ((legacy, " ada1@EXAMPLE.com"), (dual, "ADA2@example.COM ")):
                found = await enc.fetch(
                    conn, b, enc.c.workspace_id == ws, enc.search_clause(b, "email", query)
                )
                assert [r["id"] for r in found if enc.matches("email", r["email"], query)] == [
                    row["id"]
                ]
            phone = await enc.fetch(
                conn, b, enc.c.workspace_id == ws, enc.search_clause(b, "phone", "1-555-010-0001")
            )
            assert [r["id"] for r in phone] == [legacy["id"]]
        b = behaviour(Phase.CONTRACT)  # blind index only: the legacy row is not backfilled
        found = await enc.fetch(
            conn, b, enc.c.workspace_id == ws, enc.search_clause(b, "email", "ada2@example.com")
        )
        assert [r["id"] for r in found] == [dual["id"]]


async def test_shadow_reads_count_mismatches_without_values(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    enc, metrics, events = make_table(shadow_sample_rate=1.0)
    ws = uuid.uuid4()
    a, z = person(ws, 1), person(ws, 2)
    async with engine.begin() as conn:
        await enc.insert(conn, behaviour(Phase.DUAL_WRITE), a)
        await enc.insert(conn, behaviour(Phase.DUAL_WRITE), z)
        # copy a valid ciphertext of another plaintext into place, bypassing the trigger
        await conn.execute(text("SELECT set_config('dualwrite.keep_ciphertext', 'on', true)"))
        await conn.execute(
            text("UPDATE clients SET first_name = 'Grace' WHERE id = :i"), {"i": a["id"]}
        )
        for phase in (Phase.BACKFILL, Phase.READ_SWITCH):
            await enc.fetch(conn, behaviour(phase), enc.c.workspace_id == ws)
    assert (
        metrics.value(
            "dualwrite_shadow_read_mismatches_total", migration="clients_pii", field="first_name"
        )
        == 2
    )
    assert metrics.value("dualwrite_shadow_reads_total", migration="clients_pii") == 4
    assert events.counts == {"shadow_mismatch": 2}
    assert "Grace" not in caplog.text and "Ada1" not in caplog.text
    assert "clients.first_name" in caplog.text


async def test_tampered_ciphertext_raises_and_counts(engine: AsyncEngine) -> None:
    enc, metrics, events = make_table()
    ws = uuid.uuid4()
    a, z = person(ws, 1), person(ws, 2)
    b = behaviour(Phase.CONTRACT)
    async with engine.begin() as conn:
        await enc.insert(conn, b, a)
        await enc.insert(conn, b, z)
        await conn.execute(
            text(
                "UPDATE clients SET last_name_encrypted = overlay(last_name_encrypted placing "
                "decode(lpad(to_hex(get_byte(last_name_encrypted, 20) # 1), 2, '0'), 'hex') "
                "from 21 for 1) WHERE id = :i"
            ),
            {"i": a["id"]},
        )
        with pytest.raises(DecryptionError) as caught:
            await enc.fetch(conn, b, enc.c.id == a["id"])
        assert "Lovelace" not in str(caught.value)
        assert (await enc.fetch(conn, b, enc.c.id == z["id"]))[0]["last_name"] == "Lovelace"
    assert (
        metrics.value(
            "dualwrite_crypto_failures_total",
            operation="decrypt",
            migration="clients_pii",
            field="last_name",
        )
        == 1
    )
    assert events.counts == {"decrypt_failure": 1}


async def test_no_keys_refuses_ciphertext_writes(engine: AsyncEngine) -> None:
    enc, _, _ = make_table(cipher=None, unavailable_reason="key v2 is not held")
    ws = uuid.uuid4()
    async with engine.begin() as conn:
        await enc.insert(conn, behaviour(Phase.PLAINTEXT), person(ws))  # plaintext needs no key
        for phase in (Phase.DUAL_WRITE, Phase.CONTRACT):
            with pytest.raises(EncryptionUnavailableError, match="key v2 is not held"):
                await enc.insert(conn, behaviour(phase), person(ws))
        n = (await conn.execute(text("SELECT count(*) FROM clients"))).scalar()
    assert n == 1


def test_encode_field_is_public_for_the_backfiller() -> None:
    enc, _, _ = make_table()
    ct, bidx = enc.codec.encode_field("email", "a@b.io", "k1")
    assert ct is not None and ct.startswith(b"v1:") and bidx == BIDX.compute("A@B.io", "email")
    assert enc.codec.decrypt_field("email", ct, "k1") == "a@b.io"
    assert enc.codec.encode_field("first_name", None, "k1") == (None, None)


@pytest.mark.parametrize("phase", [Phase.BACKFILL, Phase.READ_SWITCH])
async def test_unsampled_read_selects_only_what_it_serves(
    engine: AsyncEngine, phase: Phase
) -> None:
    """Not drawn for the shadow compare, a read carries one source per field: in
    ``read_switch`` a plaintext only where its ciphertext is missing (the fallback still
    serves and counts it), in ``backfill`` no ciphertext at all."""
    enc, metrics, events = make_table(shadow_sample_rate=0.0)
    ws = uuid.uuid4()
    done, pending = person(ws, 1), person(ws, 2)
    async with engine.begin() as conn:
        await enc.insert(conn, behaviour(Phase.DUAL_WRITE), done)
        await enc.insert(conn, behaviour(Phase.PLAINTEXT), pending)  # not backfilled
        with count_statements(engine) as seen:
            got = await enc.fetch(conn, behaviour(phase), enc.c.workspace_id == ws)
    assert len(seen) == 1
    sql = seen[0].lower()
    assert {r["id"]: r["email"] for r in got} == {
        done["id"]: done["email"],
        pending["id"]: pending["email"],
    }
    if phase is Phase.READ_SWITCH:
        assert "case when" in sql and "email_encrypted is null" in sql
        assert events.counts == {"read_fallback": 6}  # pending's non-null fields
    else:
        assert "_encrypted" not in sql
        assert events.counts == {}
    assert metrics.value("dualwrite_shadow_reads_total", migration="clients_pii") == 0


async def test_a_sampled_statement_compares_every_row(engine: AsyncEngine) -> None:
    """The shadow sample is drawn per statement: a drawn one selects both sources in full and
    compares all its rows, an undrawn one none (same expected share as a per-row draw)."""
    draws = iter([0.1, 0.9])  # rate 0.5: the first statement is drawn, the second is not
    enc, metrics, _ = make_table(shadow_sample_rate=0.5, sample=lambda: next(draws))
    ws = uuid.uuid4()
    async with engine.begin() as conn:
        for i in range(3):
            await enc.insert(conn, behaviour(Phase.DUAL_WRITE), person(ws, i))
        for _ in range(2):
            got = await enc.fetch(conn, behaviour(Phase.READ_SWITCH), enc.c.workspace_id == ws)
            assert len(got) == 3
    assert metrics.value("dualwrite_shadow_reads_total", migration="clients_pii") == 3
