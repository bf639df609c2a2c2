"""Primary-key changes through the framework's own update paths (Core ``EncryptedTable`` and the
ORM): every ciphertext is re-encrypted under the new key in the same statement, in every phase
that writes ciphertext, finalized included; and ORM search from ``contract`` on finds a row a
legacy writer changed (the guard trigger cleared its blind index)."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import MetaData, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase

from clients_service.schema import CLIENTS_PII
from clients_service.tables import CLIENTS
from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
from dualwrite.metrics import Metrics
from dualwrite.phases import Behaviour, Phase, behaviour
from dualwrite.runtime.codec import FieldCodec
from dualwrite.runtime.orm import encrypted
from dualwrite.runtime.table import EncryptedTable
from dualwrite.schema import sql as schema_sql
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1

KEYRING = Keyring([DataKey("v1", base64.b64decode(TEST_KEY_V1))])
CIPHER = FieldCipher(KEYRING)
BIDX = BlindIndex(base64.b64decode(TEST_BIDX_KEY))
CODEC = FieldCodec(CLIENTS_PII, CIPHER, BIDX, Metrics())
CORE = EncryptedTable(CLIENTS, CODEC)


class Base(DeclarativeBase):
    pass


class Client(Base):
    """An ORM model of the clients table (its own copy of the Core table)."""

    __table__ = CLIENTS.to_metadata(MetaData())


def new_client(v: dict[str, Any]) -> Client:
    now = dt.datetime.now(dt.UTC)
    return Client(**v, created_at=now, updated_at=now)


CLIENT_MODEL = encrypted(Client, CLIENTS_PII)


class Current:
    """The phase the bound model sees."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = behaviour(Phase.DUAL_WRITE)

    def __call__(self) -> Behaviour:
        return self.behaviour


@pytest.fixture
async def orm(
    engine: AsyncEngine,
) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], Current]]:
    current = Current()
    CLIENT_MODEL.bind(CODEC, current)
    yield async_sessionmaker(engine, expire_on_commit=False), current


def values(i: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "workspace_id": uuid.uuid4(),
        "first_name": f"Ada{i}",
        "last_name": "Lovelace",
        "email": f"ada{i}@example.org",
        "phone": f"+1 555 010 {i:04d}",
        "address": "1 Main St",
        "medical_history": f"history {i}",
        "emergency_contact_name": None,
        "emergency_contact_phone": "+1 555 999 0000",
    }


async def stored(engine: AsyncEngine, pk: uuid.UUID) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM clients WHERE id = :i"), {"i": pk})).first()
        return None if row is None else dict(row._mapping)


def decrypted_under(row: dict[str, Any], pk: uuid.UUID) -> dict[str, Any]:
    """Every field's ciphertext decrypted with ``pk`` as the associated-data row key (raises if
    one is still bound to another key)."""
    out: dict[str, Any] = {}
    for f in CLIENTS_PII.fields:
        ct = row[f.ciphertext_column]
        out[f.name] = None if ct is None else CIPHER.decrypt(
            ct, table="clients", column=f.name, row_key=str(pk)
        )  # fmt: skip
    return out


def expected(v: dict[str, Any], **changed: Any) -> dict[str, Any]:
    return {f: changed.get(f, v[f]) for f in CLIENTS_PII.field_names}


async def finalize_table(engine: AsyncEngine) -> None:
    """The contract revision's DDL (plaintext columns dropped, the key guard installed)."""
    async with engine.begin() as conn:
        await conn.execute(text(schema_sql.keep_ciphertext_sql()))
        nulls = ", ".join(f"{f} = NULL" for f in CLIENTS_PII.field_names)
        await conn.execute(text(f"UPDATE clients SET {nulls}"))
        for statement in schema_sql.contract_ddl(CLIENTS_PII):
            await conn.execute(text(statement))


WRITING_PHASES = [Phase.DUAL_WRITE, Phase.BACKFILL, Phase.READ_SWITCH, Phase.CONTRACT]


@pytest.mark.parametrize("phase", [*WRITING_PHASES, Phase.FINALIZED])
async def test_core_update_of_the_primary_key_re_encrypts_every_field(
    engine: AsyncEngine, phase: Phase
) -> None:
    v = values(1)
    async with engine.begin() as conn:
        await CORE.insert(conn, behaviour(Phase.DUAL_WRITE), v)
    if phase is Phase.FINALIZED:
        await finalize_table(engine)
    b, new = behaviour(phase), uuid.uuid4()
    async with engine.begin() as conn:
        got = await CORE.update(conn, b, v["id"], {"id": new, "email": "moved@example.org"})
    assert got is not None and got["id"] == new
    assert {f: got[f] for f in CLIENTS_PII.field_names} == expected(v, email="moved@example.org")
    assert await stored(engine, v["id"]) is None
    row = await stored(engine, new)
    assert row is not None
    assert decrypted_under(row, new) == {
        f: (None if x is None else str(x))
        for f, x in expected(v, email="moved@example.org").items()
    }
    assert row["email_bidx"] == BIDX.stored("moved@example.org", "email")
    async with engine.connect() as conn:
        [read] = await CORE.fetch(conn, behaviour(phase), CORE.c.id == new)
    assert {f: read[f] for f in CLIENTS_PII.field_names} == expected(v, email="moved@example.org")


async def test_core_update_of_the_key_of_a_missing_row_changes_nothing(engine: AsyncEngine) -> None:
    v = values(2)
    async with engine.begin() as conn:
        await CORE.insert(conn, behaviour(Phase.DUAL_WRITE), v)
        wrong_scope = CORE.c.workspace_id == uuid.uuid4()
        got = await CORE.update(
            conn, behaviour(Phase.READ_SWITCH), v["id"], {"id": uuid.uuid4()}, wrong_scope
        )
    assert got is None and await stored(engine, v["id"]) is not None


def test_update_params_refuse_a_key_change_without_every_field() -> None:
    key = uuid.uuid4()
    with pytest.raises(ValueError, match="must rewrite every encrypted field") as refused:
        CORE.update_params(behaviour(Phase.READ_SWITCH), key, {"id": uuid.uuid4(), "email": "x"})
    assert "first_name" in str(refused.value) and "x" not in str(refused.value).split(": ")[0]
    same = CORE.update_params(behaviour(Phase.READ_SWITCH), key, {"id": key, "email": "x@y.z"})
    assert "email_encrypted" in same and "phone_encrypted" not in same  # no key change


@pytest.mark.parametrize("phase", WRITING_PHASES)
async def test_orm_update_of_the_primary_key_re_encrypts_every_field(
    engine: AsyncEngine, orm: tuple[async_sessionmaker[AsyncSession], Current], phase: Phase
) -> None:
    Session, current = orm
    v = values(3)
    async with Session() as s:
        s.add(new_client(v))
        await s.commit()
    current.behaviour = behaviour(phase)
    new = uuid.uuid4()
    async with Session() as s:
        client = await s.get(Client, v["id"])
        assert client is not None
        client.id = new
        client.phone = "+44 20 7946 0958"
        await s.commit()
    assert await stored(engine, v["id"]) is None
    row = await stored(engine, new)
    assert row is not None
    assert decrypted_under(row, new) == {
        f: (None if x is None else str(x)) for f, x in expected(v, phone="+44 20 7946 0958").items()
    }
    async with Session() as s:
        again = await s.get(Client, new)
        assert again is not None and again.phone == "+44 20 7946 0958"
        assert again.first_name == v["first_name"]


async def test_orm_search_in_contract_finds_a_row_a_legacy_writer_changed(
    engine: AsyncEngine, orm: tuple[async_sessionmaker[AsyncSession], Current]
) -> None:
    Session, current = orm
    v, w = values(4), values(5)
    w["workspace_id"] = v["workspace_id"]
    async with Session() as s:
        s.add_all([new_client(v), new_client(w)])
        await s.commit()
    current.behaviour = behaviour(Phase.CONTRACT)
    async with engine.begin() as conn:  # a writer that knows nothing of dualwrite
        await conn.execute(
            text("UPDATE clients SET email = 'Legacy.New@Example.org' WHERE id = :i"),
            {"i": v["id"]},
        )
    row = await stored(engine, v["id"])
    assert row is not None and row["email_bidx"] is None and row["email_encrypted"] is None
    async with Session() as s:
        query = select(Client).where(
            Client.workspace_id == v["workspace_id"], Client.email == "legacy.new@example.org"
        )
        found = (await s.scalars(query)).all()
        assert [c.id for c in found] == [v["id"]]
        assert found[0].email == "Legacy.New@Example.org"  # read back from plaintext
        by_index = select(Client).where(Client.email == w["email"])
        assert [c.id for c in (await s.scalars(by_index)).all()] == [w["id"]]
