"""The ORM integration on real PostgreSQL, with the example clinic app's own models: every
supported operation in every phase, every unsupported form's error, unique fields."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import URL, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
from dualwrite.db import make_engine
from dualwrite.errors import DualwriteError, UnsupportedQueryError
from dualwrite.metrics import Metrics
from dualwrite.phases import Behaviour, Phase, behaviour
from dualwrite.runtime.codec import FieldCodec
from dualwrite.schema import ops
from dualwrite.testing import DatabaseFactory
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1
from tests.integration.clinic_support import (
    PATIENTS_PII,
    create_clinic_schema,
    decrypt_independently,
    move_to,
    run_ops,
)

from clinic_app.models import PATIENTS, Patient, Visit  # isort: skip

KEYS = Keyring([DataKey("v1", base64.b64decode(TEST_KEY_V1))])
BIDX = BlindIndex(base64.b64decode(TEST_BIDX_KEY))
PHASES = list(Phase)


class Events:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count_read_event(self, name: str, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


class Phase_:
    """The phase the bound model sees (the test moves it with the state row)."""

    def __init__(self) -> None:
        self.current: Behaviour | None = behaviour("plaintext")

    def __call__(self) -> Behaviour | None:
        return self.current


@pytest.fixture
async def clinic(db_factory: DatabaseFactory) -> AsyncIterator[tuple[AsyncEngine, Phase_, Events]]:
    url: URL = await db_factory.create("0002")
    engine = make_engine(url, pool_size=4)
    await create_clinic_schema(engine)
    phase, events = Phase_(), Events()
    codec = FieldCodec(PATIENTS_PII, FieldCipher(KEYS), BIDX, Metrics(), events=events,
                       shadow_sample_rate=1.0)  # fmt: skip
    PATIENTS.bind(codec, phase)
    try:
        yield engine, phase, events
    finally:
        await engine.dispose()
        await db_factory.drop(url)


async def enter(engine: AsyncEngine, phase: Phase_, target: Phase) -> None:
    await move_to(engine, target)
    phase.current = behaviour(target)


def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def patient(i: int, clinic_id: int = 1) -> Patient:
    return Patient(
        clinic_id=clinic_id,
        full_name=f"Ada  Lovelace {i}",
        email=f"Ada{i}@Example.org",
        date_of_birth=dt.date(1980, 1, 1) + dt.timedelta(days=i),
        intake={"allergies": ["penicillin"], "weight_kg": 61.50, "notes": f"n{i}", "a": 1e20},
        balance=Decimal("12.345"),  # numeric(10,2) stores 12.35
        last_visit=dt.datetime(2024, 3, 1, 9, 30, 15, 123456, tzinfo=dt.UTC),  # (3): .123
    )


EXPECTED = {
    "balance": Decimal("12.35"),
    "last_visit": dt.datetime(2024, 3, 1, 9, 30, 15, 123000, tzinfo=dt.UTC),
}


async def raw(engine: AsyncEngine, pk: int) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = await conn.execute(text("SELECT * FROM clinic.patients WHERE id = :i"), {"i": pk})
        return dict(row.one()._mapping)


@pytest.mark.parametrize("target", PHASES)
async def test_supported_operations_in_every_phase(
    clinic: tuple[AsyncEngine, Phase_, Events], target: Phase
) -> None:
    engine, phase, events = clinic
    Session = sessions(engine)
    async with Session() as s:  # rows written in plaintext first: the backfill's starting point
        s.add(patient(0))
        await s.commit()
    await enter(engine, phase, target)
    b = behaviour(target)

    # session.add + commit: a GENERATED ALWAYS key comes back from RETURNING
    async with Session() as s:
        p = patient(1)
        s.add(p)
        await s.commit()
        pk = p.id
        assert isinstance(pk, int) and p.email == "Ada1@Example.org"  # the object keeps its value
        s.add(Visit(patient_id=pk, note="first visit"))
        await s.commit()
    stored = await raw(engine, pk)
    for f in PATIENTS_PII.fields:
        if b.writes_plaintext:
            assert stored[f.name] is not None
        elif b.plaintext_column_exists:
            assert stored[f.name] is None
        else:
            assert f.name not in stored
        ct = stored[f.ciphertext_column]
        if b.writes_ciphertext:
            text_value = decrypt_independently(ct, f.name, pk)
            assert text_value == f.value_type.encode(getattr(patient(1), f.name))
        else:
            assert ct is None
    if b.writes_ciphertext:
        assert decrypt_independently(stored["date_of_birth_encrypted"], "date_of_birth", pk) == (
            "1980-01-02"
        )
        assert json.loads(decrypt_independently(stored["intake_encrypted"], "intake", pk)) == {
            "a": 100000000000000000000, "allergies": ["penicillin"], "notes": "n1",
            "weight_kg": 61.5,
        }  # fmt: skip
        assert stored["email_uidx"] is not None and stored["email_bidx"] is not None

    # session.get / select(Model).where(searchable == value) / relationship loads
    async with Session() as s:
        got = await s.get(Patient, pk)
        assert got is not None
        assert (got.email, got.date_of_birth, got.balance, got.last_visit) == (
            "Ada1@Example.org", dt.date(1980, 1, 2), EXPECTED["balance"], EXPECTED["last_visit"]
        )  # fmt: skip
        assert got.intake == {"a": 10**20, "allergies": ["penicillin"], "notes": "n1",
                              "weight_kg": 61.5}  # fmt: skip
        assert [v.note for v in got.visits] == ["first visit"]
    async with Session() as s:
        found = (await s.scalars(select(Patient).where(Patient.email == " ada1@example.ORG"))).all()
        assert [x.id for x in found] == [pk]
        by_dob = select(Patient).where(
            Patient.clinic_id == 1, Patient.date_of_birth == dt.date(1980, 1, 2)
        )
        assert [x.id for x in (await s.scalars(by_dob)).all()] == [pk]
        by_name = select(Patient).where(Patient.full_name == "ada lovelace 1")
        assert [x.id for x in (await s.scalars(by_name)).all()] == [pk]
        loaded = (await s.scalars(select(Visit).options(selectinload(Visit.patient)))).all()
        assert loaded[0].patient.full_name == "Ada  Lovelace 1"

    # attribute assignment + flush, then a fresh read
    async with Session() as s:
        got = await s.get(Patient, pk)
        assert got is not None
        got.email = "ada.new@example.org"
        got.intake = {"b": [1, 2]}
        await s.commit()
        assert got.email == "ada.new@example.org"
    async with Session() as s:
        again = await s.get(Patient, pk)
        assert again is not None and again.email == "ada.new@example.org"
        assert again.intake == {"b": [1, 2]} and again.full_name == "Ada  Lovelace 1"
        await s.refresh(again)
        assert again.email == "ada.new@example.org"
    if b.writes_ciphertext:
        stored = await raw(engine, pk)
        assert decrypt_independently(stored["email_encrypted"], "email", pk) == (
            "ada.new@example.org"
        )
        if b.plaintext_column_exists:
            assert (stored["email"] is None) == (not b.writes_plaintext)
    assert events.counts.get("shadow_mismatch", 0) == 0
    assert events.counts.get("decrypt_failure", 0) == 0

    # delete
    async with Session() as s:
        gone = await s.get(Patient, pk)
        for v in (await s.scalars(select(Visit).where(Visit.patient_id == pk))).all():
            await s.delete(v)
        await s.delete(gone)
        await s.commit()
        assert await s.get(Patient, pk) is None


async def test_one_phase_per_unit_of_work(clinic: tuple[AsyncEngine, Phase_, Events]) -> None:
    engine, phase, _ = clinic
    await enter(engine, phase, Phase.DUAL_WRITE)
    async with sessions(engine)() as s:
        s.add(patient(5))
        await s.flush()
        await enter(engine, phase, Phase.BACKFILL)  # the phase moves mid unit of work
        p = patient(6)
        s.add(p)
        await s.commit()  # still written as dual_write: same statements for the whole unit
        pk = p.id
    assert (await raw(engine, pk))["email_encrypted"] is not None


async def test_finalize_window_runs_without_the_dropped_columns(
    clinic: tuple[AsyncEngine, Phase_, Events],
) -> None:
    engine, phase, _ = clinic
    await enter(engine, phase, Phase.CONTRACT)
    dropped: list[bool] = []
    PATIENTS.on_columns_dropped = lambda: dropped.append(True)
    await move_to(engine, Phase.FINALIZED)  # the revision ran; this instance still sees contract
    async with sessions(engine)() as s:
        p = patient(7)
        s.add(p)
        await s.commit()
        got = await s.get(Patient, p.id)
        assert got is not None and got.email == "Ada7@Example.org"
    assert dropped == [True]


async def test_unsupported_forms_raise_clear_errors(
    clinic: tuple[AsyncEngine, Phase_, Events],
) -> None:
    engine, phase, _ = clinic
    await enter(engine, phase, Phase.READ_SWITCH)
    refused = [
        select(Patient.email),
        select(Patient.id, Patient.date_of_birth),
        select(Patient).where(Patient.full_name.like("Ada%")),
        select(Patient).where(Patient.email.ilike("ada%")),
        select(Patient).where(Patient.full_name.contains("Love")),
        select(Patient).order_by(Patient.email),
        select(Patient).where(Patient.balance == Decimal("1.00")),  # no search: refused
        select(Patient).where(Patient.date_of_birth > dt.date(2000, 1, 1)),
        update(Patient).where(Patient.id == 1).values(email="x@y.z"),
    ]
    async with sessions(engine)() as s:
        for stmt in refused:
            with pytest.raises(UnsupportedQueryError) as info:
                await s.execute(stmt)
            assert "\n" not in str(info.value) and "patients_pii" in str(info.value)
        with pytest.raises(UnsupportedQueryError, match="bulk INSERT"):
            await s.execute(insert(Patient), [{"clinic_id": 1, "full_name": "x", "email": "x"}])
        with pytest.raises(UnsupportedQueryError, match="bulk"):
            await s.run_sync(
                lambda ss: ss.bulk_insert_mappings(
                    Patient,
                    [{"clinic_id": 1, "full_name": "x", "email": "b@x"}],  # type: ignore[arg-type]
                )
            )
        await s.rollback()
        with pytest.raises(UnsupportedQueryError, match="bulk"):
            await s.run_sync(lambda ss: ss.bulk_save_objects([patient(9)]))
        await s.rollback()
        # unencrypted columns stay free to use
        await s.execute(update(Patient).where(Patient.clinic_id == 99).values(clinic_id=98))
        assert (await s.scalars(select(Patient.id).where(Patient.clinic_id == 1))).all() == []


async def test_unique_field_keeps_the_constraint_after_finalize(
    clinic: tuple[AsyncEngine, Phase_, Events],
) -> None:
    engine, phase, _ = clinic
    await enter(engine, phase, Phase.CONTRACT)
    await enter(engine, phase, Phase.FINALIZED)
    Session = sessions(engine)
    async with Session() as s:
        s.add(patient(1))
        await s.commit()
    async with Session() as s:
        s.add(patient(1))  # same e-mail, same clinic
        with pytest.raises(IntegrityError) as info:
            await s.commit()
        assert getattr(info.value.orig, "sqlstate", None) == "23505"
    async with Session() as s:
        s.add(patient(1, clinic_id=2))  # another clinic: allowed, like the original constraint
        await s.commit()


async def test_existing_duplicates_are_listed_by_key_before_the_build(
    db_factory: DatabaseFactory,
) -> None:
    url = await db_factory.create("0002")
    engine = make_engine(url, pool_size=2)
    try:
        await create_clinic_schema(engine, expand=False)
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE clinic.patients DROP CONSTRAINT "
                                    "uq_patients_clinic_email"))  # fmt: skip
            for email in ("a@x.io", "a@x.io", "b@x.io", "a@x.io", "b@x.io", "c@x.io"):
                await conn.execute(
                    text("INSERT INTO clinic.patients (clinic_id, full_name, email) "
                         "VALUES (1, 'x', :e)"), {"e": email},
                )  # fmt: skip
        with pytest.raises(DualwriteError) as info:
            async with engine.connect() as conn:
                await conn.run_sync(run_ops, ops.expand, PATIENTS_PII)
        message = str(info.value)
        assert "primary keys 1, 2, 4; 3, 5" in message and "@" not in message
        async with engine.connect() as conn:  # nothing was changed
            found = await conn.execute(text(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'clinic.patients'::regclass "
                "AND attname = 'email_uidx'"))  # fmt: skip
            assert found.scalar() == 0
    finally:
        await engine.dispose()
        await db_factory.drop(url)


async def test_core_insert_with_a_server_generated_key(
    clinic: tuple[AsyncEngine, Phase_, Events],
) -> None:
    """EncryptedTable (the Core API) on the same table: the key comes back from RETURNING and
    the ciphertexts are bound to it in the same transaction."""
    engine, phase, _ = clinic
    await enter(engine, phase, Phase.DUAL_WRITE)
    from dualwrite.runtime.table import EncryptedTable

    table = EncryptedTable(Patient, PATIENTS.require_codec(), updated_at=None)
    b = behaviour(Phase.DUAL_WRITE)
    async with engine.begin() as conn:
        row = await table.insert(conn, b, {"clinic_id": 4, "full_name": "Core", "email": "c@x.io",
                                           "date_of_birth": dt.date(2001, 2, 3)})  # fmt: skip
    pk = row["id"]
    stored = await raw(engine, pk)
    assert decrypt_independently(stored["email_encrypted"], "email", pk) == "c@x.io"
    assert decrypt_independently(stored["date_of_birth_encrypted"], "date_of_birth", pk) == (
        "2001-02-03"
    )
    async with engine.connect() as conn:
        got = await table.fetch(conn, behaviour(Phase.READ_SWITCH), table.c.id == pk)
    assert got[0]["date_of_birth"] == dt.date(2001, 2, 3) and got[0]["email"] == "c@x.io"


async def test_a_legacy_plaintext_change_clears_ciphertext_blind_and_unique_indexes(
    clinic: tuple[AsyncEngine, Phase_, Events],
) -> None:
    engine, phase, _ = clinic
    await enter(engine, phase, Phase.DUAL_WRITE)
    async with sessions(engine)() as s:
        p = patient(3)
        s.add(p)
        await s.commit()
    before = await raw(engine, p.id)
    assert before["email_uidx"] is not None and before["email_bidx"] is not None
    async with engine.begin() as conn:  # a writer that knows nothing of dualwrite
        await conn.execute(text("UPDATE clinic.patients SET email = 'legacy@x.io' WHERE id = :i"),
                           {"i": p.id})  # fmt: skip
    after = await raw(engine, p.id)
    assert (after["email_encrypted"], after["email_bidx"], after["email_uidx"]) == (None,) * 3
    assert after["full_name_encrypted"] == before["full_name_encrypted"]  # untouched fields keep
