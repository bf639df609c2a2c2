"""The example clinic app migrated end to end under live traffic.

Every phase forward with its real guards (and a rollback from ``read_switch``), while the app's
own ORM code keeps writing and a legacy writer that knows nothing of dualwrite writes plain SQL.
At the end (``finalized``, plaintext dropped): no write lost, a full verification clean, every
ciphertext decrypted by an independent AES-GCM with the documented associated data
(``clinic.patients``, the integer key), and typed values read back exactly.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from dualwrite.backfill import Backfiller, BackfillOptions
from dualwrite.config import Settings
from dualwrite.control import transitions
from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
from dualwrite.db import connect_raw, make_engine
from dualwrite.metrics import Metrics
from dualwrite.phases import BackfillMode, Phase
from dualwrite.runtime.codec import FieldCodec
from dualwrite.runtime.watcher import PhaseWatcher
from dualwrite.schema import ops
from dualwrite.state import registry
from dualwrite.testing import DatabaseFactory
from dualwrite.verify import verify
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1, make_settings
from tests.integration.clinic_support import (
    CONTRACT_DROPS,
    PATIENTS_PII,
    create_clinic_schema,
    decrypt_independently,
    run_ops,
)

from clinic_app.models import PATIENTS, Patient  # isort: skip

pytestmark = pytest.mark.e2e

KEYS = Keyring([DataKey("v1", base64.b64decode(TEST_KEY_V1))])
BIDX = BlindIndex(base64.b64decode(TEST_BIDX_KEY))
SEED = 1500
NAME = PATIENTS_PII.name


def values(i: int, rev: int = 0) -> dict[str, Any]:
    """The typed values of patient ``i`` at revision ``rev`` (as PostgreSQL stores them)."""
    return {
        "clinic_id": 1 + i % 3,
        "full_name": f"Patient {i} r{rev}",
        "email": f"p{i}.r{rev}@clinic.example",
        "date_of_birth": dt.date(1950, 1, 1) + dt.timedelta(days=(i * 37 + rev) % 20000),
        "intake": {"form": "intake", "answers": [i, rev], "score": 2.5, "ok": True},
        "balance": Decimal(f"{i % 1000}.{rev % 100:02d}"),
        "last_visit": dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            seconds=i * 61, microseconds=(rev * 1000) % 1_000_000),
    }  # fmt: skip


class Traffic:
    """The ORM app and the legacy SQL writer; what each last wrote, by primary key."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.expected: dict[int, dict[str, Any]] = {}
        self.orm_ids: list[int] = []
        self.legacy_ids: list[int] = []
        self.failures: list[str] = []
        self.writes = {"orm": 0, "legacy": 0}
        self.stop = asyncio.Event()
        self.legacy_on = asyncio.Event()
        self.legacy_on.set()
        self.legacy_idle = asyncio.Event()
        self.next_i = SEED
        self.rng = random.Random(3)

    def fresh(self) -> int:
        self.next_i += 1
        return self.next_i

    async def orm(self) -> None:
        rev = 0
        while not self.stop.is_set():
            rev += 1
            try:
                async with self.sessions() as s:
                    if self.orm_ids and self.rng.random() < 0.5:
                        pk = self.rng.choice(self.orm_ids)
                        p = await s.get(Patient, pk)
                        assert p is not None
                        new = values(pk + 100_000, rev)
                        new["clinic_id"] = p.clinic_id
                        for k, v in new.items():
                            setattr(p, k, v)
                        await s.commit()
                        self.expected[pk] = new
                    else:
                        v = values(self.fresh(), rev)
                        p = Patient(**v)
                        s.add(p)
                        await s.commit()
                        self.orm_ids.append(p.id)
                        self.expected[p.id] = v
                self.writes["orm"] += 1
            except Exception as exc:  # every failure is a test failure
                self.failures.append(f"orm: {type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(0.005)

    async def legacy(self) -> None:
        conn = await connect_raw(self.engine)
        rev = 0
        try:
            while not self.stop.is_set():
                if not self.legacy_on.is_set():
                    self.legacy_idle.set()
                    await self.legacy_on.wait()
                    continue
                self.legacy_idle.clear()
                rev += 1
                try:
                    if self.legacy_ids and self.rng.random() < 0.5:
                        pk = self.rng.choice(self.legacy_ids)
                        v = values(pk + 200_000, rev)
                        await conn.execute(
                            "UPDATE clinic.patients SET full_name = $2, email = $3, "
                            "date_of_birth = $4, intake = $5::jsonb, balance = $6, "
                            "last_visit = $7 WHERE id = $1", pk, v["full_name"], v["email"],
                            v["date_of_birth"], json.dumps(v["intake"]), v["balance"],
                            v["last_visit"],
                        )  # fmt: skip
                        v["clinic_id"] = self.expected[pk]["clinic_id"]
                    else:
                        v = values(self.fresh(), rev)
                        pk = await conn.fetchval(
                            "INSERT INTO clinic.patients (clinic_id, full_name, email, "
                            "date_of_birth, intake, balance, last_visit) VALUES ($1, $2, $3, "
                            "$4, $5::jsonb, $6, $7) RETURNING id", v["clinic_id"],
                            v["full_name"], v["email"], v["date_of_birth"],
                            json.dumps(v["intake"]), v["balance"], v["last_visit"],
                        )  # fmt: skip
                        self.legacy_ids.append(pk)
                    self.expected[pk] = v
                    self.writes["legacy"] += 1
                except Exception as exc:
                    self.failures.append(f"legacy: {type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(0.005)
        finally:
            self.legacy_idle.set()
            await conn.close()

    async def pause_legacy(self) -> None:
        self.legacy_on.clear()
        await self.legacy_idle.wait()


@pytest.fixture
async def clinic(db_factory: DatabaseFactory) -> AsyncIterator[tuple[AsyncEngine, Settings]]:
    url: URL = await db_factory.create("0002")
    engine = make_engine(url, pool_size=8)
    await create_clinic_schema(engine)
    settings = make_settings(url, require_latency_gate=False, soak_seconds=0)
    try:
        yield engine, settings
    finally:
        await engine.dispose()
        await db_factory.drop(url)


async def seed(engine: AsyncEngine, traffic: Traffic) -> None:
    conn = await connect_raw(engine)
    try:
        rows = [values(i) for i in range(SEED)]
        ids = await conn.fetch(
            "INSERT INTO clinic.patients (clinic_id, full_name, email, date_of_birth, intake, "
            "balance, last_visit) SELECT * FROM unnest($1::int[], $2::text[], $3::text[], "
            "$4::date[], $5::jsonb[], $6::numeric[], $7::timestamptz[]) RETURNING id",
            [r["clinic_id"] for r in rows], [r["full_name"] for r in rows],
            [r["email"] for r in rows], [r["date_of_birth"] for r in rows],
            [json.dumps(r["intake"]) for r in rows], [r["balance"] for r in rows],
            [r["last_visit"] for r in rows],
        )  # fmt: skip
        for rec, row in zip(ids, rows, strict=True):
            traffic.expected[rec[0]] = row
            traffic.legacy_ids.append(rec[0])
    finally:
        await conn.close()


async def move(engine: AsyncEngine, s: Settings, watcher: PhaseWatcher, target: Phase) -> None:
    state = await transitions.change_phase(
        engine, NAME, target, actor="e2e", reason="clinic e2e", force=False, settings=s,
        keyring_current="v1",
    )  # fmt: skip
    assert await watcher.wait_for_version(NAME, state.version, 5)
    await asyncio.sleep(3 * s.poll_interval_seconds)  # a heartbeat reports it to the guards


async def backfill(engine: AsyncEngine, mode: BackfillMode) -> None:
    worker = Backfiller(engine, NAME, FieldCipher(KEYS), BIDX,
                        BackfillOptions(mode=mode, batch_size=300, poll_seconds=0.2))  # fmt: skip
    report = await worker.run()
    assert report.rows_failed == 0, report.failed_pks


async def verified(engine: AsyncEngine) -> None:
    report = await verify(engine, PATIENTS_PII, FieldCipher(KEYS), BIDX, full=True)
    assert report.ok, report.render()


async def test_clinic_app_is_migrated_under_live_traffic(
    clinic: tuple[AsyncEngine, Settings],
) -> None:
    engine, s = clinic
    traffic = Traffic(engine)
    await seed(engine, traffic)
    watcher = PhaseWatcher(engine, s, key_versions=frozenset({"v1"}))
    await watcher.start()
    codec = FieldCodec(PATIENTS_PII, FieldCipher(KEYS), BIDX, Metrics(), events=watcher,
                       shadow_sample_rate=0.2)  # fmt: skip
    PATIENTS.bind(codec, lambda: watcher.behaviour(NAME), on_columns_dropped=watcher.refresh)
    tasks = [asyncio.create_task(traffic.orm()), asyncio.create_task(traffic.legacy())]
    try:
        await asyncio.sleep(0.3)
        await move(engine, s, watcher, Phase.DUAL_WRITE)
        await move(engine, s, watcher, Phase.BACKFILL)
        await traffic.pause_legacy()  # coverage must be complete when the guard looks
        await backfill(engine, BackfillMode.ENCRYPT)
        await verified(engine)
        await move(engine, s, watcher, Phase.READ_SWITCH)
        traffic.legacy_on.set()
        await asyncio.sleep(0.5)
        # the rollback: reads go back once a full verification that started after the fleet
        # observed read_switch finds no mismatch (the legacy writer's cleared ciphertexts are
        # "missing", which a move back to plaintext reads accepts)
        rollback_check = await verify(engine, PATIENTS_PII, FieldCipher(KEYS), BIDX, full=True)
        assert rollback_check.mismatched == rollback_check.undecryptable == 0
        await move(engine, s, watcher, Phase.BACKFILL)
        await asyncio.sleep(0.5)
        await traffic.pause_legacy()  # the legacy writer is retired before the contract
        await backfill(engine, BackfillMode.ENCRYPT)
        await verified(engine)
        await move(engine, s, watcher, Phase.READ_SWITCH)
        await asyncio.sleep(0.5)
        await move(engine, s, watcher, Phase.CONTRACT)
        await backfill(engine, BackfillMode.PURGE)
        async with engine.connect() as conn:  # the contract revision (online steps) ...
            await conn.run_sync(
                run_ops, ops.contract, PATIENTS_PII, allow_contract=True, **CONTRACT_DROPS
            )
        async with engine.begin() as conn:  # ... then the phase
            state = await registry.get_migration(conn, NAME)
            state = await registry.compare_and_swap_phase(
                conn, NAME, state.version, Phase.FINALIZED
            )
            await registry.notify_phase(conn, state)
        assert await watcher.wait_for_version(NAME, state.version, 5)
        await asyncio.sleep(0.5)
    finally:
        traffic.stop.set()
        traffic.legacy_on.set()
        await asyncio.gather(*tasks)
        await watcher.stop()

    assert traffic.failures == []
    assert traffic.writes["orm"] > 50 and traffic.writes["legacy"] > 50
    await verified(engine)

    # no lost write: every row reads back (through the ORM) as last written, typed exactly
    async with traffic.sessions() as s_:
        for pk, want in traffic.expected.items():
            got = await s_.get(Patient, pk)
            assert got is not None, pk
            assert {k: getattr(got, k) for k in want} == want, pk
    # every ciphertext decrypts with an independent AES-GCM and the documented associated data
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM clinic.patients"))).mappings().all()
    assert len(rows) == len(traffic.expected)
    for row in rows:
        want = traffic.expected[row["id"]]
        assert "email" not in row  # finalized: the plaintext columns are gone
        for f in PATIENTS_PII.fields:
            plain = decrypt_independently(row[f.ciphertext_column], f.name, row["id"])
            assert plain == f.value_type.encode(want[f.name])
        assert decrypt_independently(row["balance_encrypted"], "balance", row["id"]).count(".") == 1
