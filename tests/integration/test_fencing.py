"""Self-fencing and observed-after-drain with real processes: a write under a stale phase
snapshot is refused (503, nothing written), so is a write of an instance cut off from the
database for longer than its liveness window, a backfill batch under a phase the fleet left
rolls back, an instance reports a new version only once its requests of the old one have
finished (and at once then), and a writer whose current key a live instance lacks refuses."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.tables import CLIENTS
from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
from dualwrite.db import connect_raw, make_engine
from dualwrite.errors import FencedError
from dualwrite.phases import Phase
from dualwrite.runtime.codec import FieldCodec
from dualwrite.runtime.table import EncryptedTable
from dualwrite.runtime.watcher import PhaseWatcher
from tests.conftest import TEST_KEY_V1, TEST_KEY_V2, make_settings
from tests.harness.processes import environment
from tests.harness.prometheus import eventually
from tests.harness.service import dualwrite_process
from tests.integration.clients_support import new_client, seed_legacy_rows
from tests.integration.fleet_support import NAME, heartbeats, move, service, version

WS = "7b0c1f52-5d8e-4a51-9a36-1d2b7f0f9a10"


def clients(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"{base}/workspaces/{WS}", timeout=30)


async def row(engine: AsyncEngine, client_id: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT first_name, first_name_encrypted FROM clients WHERE id = :i"),
                {"i": uuid.UUID(client_id)},
            )
        ).one()


async def count(engine: AsyncEngine, where: str = "true") -> int:
    async with engine.connect() as conn:
        found = await conn.execute(text(f"SELECT count(*) FROM clients WHERE {where}"))
        return int(found.scalar_one())


def assert_fenced(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert "\n" not in detail and "Traceback" not in detail
    for word in words:
        assert word in detail, detail


async def enter_contract(engine: AsyncEngine) -> None:
    for target in (Phase.DUAL_WRITE, Phase.BACKFILL, Phase.READ_SWITCH, Phase.CONTRACT):
        await move(engine, target)


async def test_a_write_under_a_stale_phase_snapshot_is_redone_under_the_current_phase(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    await enter_contract(engine)
    # no NOTIFY and a 30 s poll: the instance keeps its `contract` snapshot (a lost notification)
    env = {"LISTEN_NOTIFY": "false", "POLL_INTERVAL_SECONDS": "30"}
    async with (
        service(database_url, tmp_path, "api-stale", **env) as (base, _),
        clients(base) as c,
    ):
        created = await c.post("/clients", json=new_client(1))
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        assert (await row(engine, cid)).first_name is None  # contract writes NULL plaintext
        await move(engine, Phase.READ_SWITCH, notify=False)  # the fleet went back
        changed = await c.patch(f"/clients/{cid}", json={"first_name": "Grace"})
        assert changed.status_code == 200, changed.text
    # fenced under `contract` (nothing written), then written under `read_switch`: plaintext too
    after = await row(engine, cid)
    assert after.first_name == "Grace" and after.first_name_encrypted is not None


async def test_an_instance_cut_off_longer_than_its_window_gets_503_and_writes_nothing(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    """A lock on the heartbeat table stalls this instance's heartbeats and refreshes (the
    refresh reads the fleet's key versions) while its request path still reaches PostgreSQL:
    to the fleet it has vanished, so it must not write, nor serve a read, with its cached
    phase."""
    await enter_contract(engine)
    async with (
        service(database_url, tmp_path, "api-cut", POLL_INTERVAL_SECONDS="0.2") as (base, _),
        clients(base) as c,
    ):
        created = await c.post("/clients", json=new_client(1))
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        before = await row(engine, cid)
        holder = await connect_raw(engine)
        try:
            await holder.execute("BEGIN")
            await holder.execute("LOCK TABLE dualwrite_instances IN ACCESS EXCLUSIVE MODE")
            await asyncio.sleep(1.0)  # longer than its 0.6 s liveness window
            await move(engine, Phase.READ_SWITCH)  # the fleet moves on meanwhile
            changed = await c.patch(f"/clients/{cid}", json={"first_name": "Grace"})
            assert_fenced(changed, "self-fencing", "not within its liveness window")
            assert_fenced(await c.post("/clients", json=new_client(2)), "self-fencing")
            # a read under the cached phase could miss what the fleet's phase writes
            read = await c.get(f"/clients/{cid}")
            assert_fenced(read, "request refused (self-fencing)", "nothing served")
        finally:
            await holder.execute("ROLLBACK")
            await holder.close()
        assert await row(engine, cid) == before  # no contract write (NULL plaintext) landed
        assert await count(engine) == 1

        async def write() -> int:
            return (await c.patch(f"/clients/{cid}", json={"first_name": "Grace"})).status_code

        await eventually(write, lambda s: s == 200, timeout=10, what="writes once reconnected")
    assert (await row(engine, cid)).first_name == "Grace"  # under read_switch: plaintext too


async def test_a_watcher_cut_off_longer_than_its_window_fences_the_core_write_path(
    engine: AsyncEngine, database_url: URL
) -> None:
    """The watcher reaches the database as its own role; the test cuts that role off while the
    write path (another connection) still works: the cached phase must not be written under."""
    role = f"dw_cut_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN SUPERUSER"))
    await move(engine, Phase.DUAL_WRITE)
    settings = make_settings(database_url, poll_interval_seconds=0.2)  # window 0.6 s
    watcher_engine = make_engine(database_url.set(username=role), pool_size=2)
    watcher = PhaseWatcher(watcher_engine, settings, key_versions=frozenset({"v1"}))
    codec = FieldCodec(
        CLIENTS_PII, FieldCipher(load_keyring(settings)), BlindIndex.from_settings(settings)
    )
    table = EncryptedTable(CLIENTS, codec, fence=watcher)

    async def write(i: int) -> None:
        values = {**new_client(i), "id": uuid.uuid4(), "workspace_id": uuid.UUID(WS)}
        with watcher.request(NAME) as snap:
            async with engine.begin() as conn:
                await table.insert(conn, snap.behaviour, values)

    await watcher.start()
    try:
        await write(1)
        async with engine.begin() as conn:
            await conn.execute(text(f"ALTER ROLE {role} NOLOGIN"))
            await conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
        await asyncio.sleep(1.0)  # longer than its liveness window
        with pytest.raises(FencedError, match="not within its liveness window"):
            await write(2)
        assert await count(engine) == 1

        async with engine.begin() as conn:
            await conn.execute(text(f"ALTER ROLE {role} LOGIN"))

        async def retry() -> bool:
            try:
                await write(3)
            except FencedError:
                return False
            return True

        await eventually(retry, bool, timeout=10, what="writes once the watcher refreshed")
        assert await count(engine) == 2
    finally:
        await watcher.stop()
        await watcher_engine.dispose()
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP ROLE IF EXISTS {role}"))


async def test_a_backfill_batch_under_a_phase_the_fleet_left_writes_nothing(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    await seed_legacy_rows(engine, 300, uuid.UUID(WS))
    await move(engine, Phase.DUAL_WRITE)
    await move(engine, Phase.BACKFILL)
    args = ("backfill", "--mode", "encrypt", "--batch-size", "10", "--max-rows-per-second", "20")
    env = environment(database_url, POLL_INTERVAL_SECONDS="0.2")
    async with dualwrite_process(env, tmp_path, "bf", *args, "--json") as bf:
        await eventually(
            lambda: count(engine, "first_name_encrypted IS NOT NULL"), lambda n: n >= 10,
            timeout=60, what="a first batch",
        )  # fmt: skip
        # hold the checkpoint row: the next batch claims its rows, converts them and then
        # waits on it at its write, the way it waits behind a slow commit of another worker
        holder = await connect_raw(engine)
        try:
            await holder.execute("BEGIN")
            await holder.execute(
                "SELECT 1 FROM dualwrite_checkpoints WHERE migration = $1 FOR UPDATE", NAME
            )

            async def waiting() -> int:
                async with engine.connect() as conn:
                    found = await conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                            "'Lock' AND datname = current_database()"
                        )
                    )
                    return int(found.scalar_one())

            await eventually(waiting, lambda n: n >= 1, timeout=30, what="a batch waiting")
            encrypted = await count(engine, "first_name_encrypted IS NOT NULL")
            await move(engine, Phase.DUAL_WRITE)  # the fleet leaves backfill meanwhile
        finally:
            await holder.execute("ROLLBACK")
            await holder.close()
        await asyncio.wait_for(asyncio.to_thread(bf.proc.wait), timeout=60)
    assert await count(engine, "first_name_encrypted IS NOT NULL") == encrypted, bf.output()
    assert "phase is now dual_write" in bf.output()


async def test_observed_is_reported_only_once_requests_under_the_old_version_finished(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    await move(engine, Phase.DUAL_WRITE)
    async with (
        service(database_url, tmp_path, "api-drain", POLL_INTERVAL_SECONDS="0.2") as (
            base,
            _,
        ),
        clients(base) as c,
    ):
        created = await c.post("/clients", json=new_client(1))
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        old = await version(engine)
        holder = await connect_raw(engine)  # a lock on the row: the PATCH stays in flight
        await holder.execute("BEGIN")
        await holder.execute("SELECT 1 FROM clients WHERE id = $1 FOR UPDATE", uuid.UUID(cid))
        try:
            grace = {"first_name": "Grace"}
            patch = asyncio.create_task(c.patch(f"/clients/{cid}", json=grace))

            async def blocked() -> int:
                async with engine.connect() as conn:
                    found = await conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type "
                            "= 'Lock' AND datname = current_database()"
                        )
                    )
                    return int(found.scalar_one())

            await eventually(blocked, lambda n: n >= 1, timeout=30, what="PATCH in flight")
            new = await move(engine, Phase.BACKFILL)
            await asyncio.sleep(1.5)  # NOTIFY + several heartbeats of a 0.2 s poll
            (beat,) = await heartbeats(engine, "api-drain")
            assert (beat.observed_version, beat.observed_phase) == (old, "dual_write")
            health = (await httpx.AsyncClient(base_url=base).get("/healthz")).json()
            assert health["version"] == new  # it has loaded the new version meanwhile
        finally:
            await holder.execute("ROLLBACK")
            await holder.close()
        assert (await patch).status_code == 200
        drained = time.perf_counter()
        await eventually(
            lambda: heartbeats(engine, "api-drain"),
            lambda rows: rows[0].observed_version == new,
            timeout=5, what="the new version reported once the PATCH finished",
        )  # fmt: skip
        assert time.perf_counter() - drained < 2.0


async def test_a_second_instance_reports_a_new_version_well_under_a_second(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    """The default 2 s poll: each move comes right after a heartbeat, so only an immediate
    heartbeat on NOTIFY reports it before the next periodic one (old code: ~2 s)."""
    latencies = []
    async with service(database_url, tmp_path, "api-second", POLL_INTERVAL_SECONDS="2"):
        for target in (Phase.DUAL_WRITE, Phase.BACKFILL, Phase.READ_SWITCH, Phase.BACKFILL):
            (first,) = await heartbeats(engine, "api-second")
            while (await heartbeats(engine, "api-second"))[0].last_seen == first.last_seen:
                await asyncio.sleep(0.01)  # a periodic heartbeat has just been written
            moved = time.perf_counter()
            new = await move(engine, target)
            while (await heartbeats(engine, "api-second"))[0].observed_version != new:
                assert time.perf_counter() - moved < 10
                await asyncio.sleep(0.005)
            latencies.append(time.perf_counter() - moved)
    print(
        f"\nobserve latency (move committed -> second instance's heartbeat shows it): "
        f"median {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} moves"
    )
    assert max(latencies) < 1.0, latencies


async def test_a_writer_whose_current_key_a_live_instance_lacks_refuses(
    engine: AsyncEngine, database_url: URL, tmp_path: Path
) -> None:
    await move(engine, Phase.DUAL_WRITE)
    rotated = {
        "ENCRYPTION_KEYS": f"v1={TEST_KEY_V1},v2={TEST_KEY_V2}",
        "ENCRYPTION_CURRENT_KEY": "v2",
        "POLL_INTERVAL_SECONDS": "0.2",
    }
    async with service(database_url, tmp_path, "api-v2", **rotated) as (new_base, _):
        async with service(database_url, tmp_path, "api-v1", POLL_INTERVAL_SECONDS="0.2") as (
            old_base,
            _,
        ):
            await asyncio.sleep(0.6)  # api-v2 has polled the fleet's key versions since
            async with clients(new_base) as c:
                refused = await c.post("/clients", json=new_client(1))
            assert_fenced(
                refused, "current key v2 is not held by live instance api-v1", "holding v1",
                "key rotation rule",
            )  # fmt: skip
            assert await count(engine) == 0
            async with clients(old_base) as c:
                assert (await c.post("/clients", json=new_client(2))).status_code == 201
        # api-v1 stopped (deregistered): api-v2 writes again once it polled the fleet

        async def write() -> int:
            async with clients(new_base) as c:
                return (await c.post("/clients", json=new_client(3))).status_code

        await eventually(write, lambda s: s == 201, timeout=10, what="api-v2 writes again")
    assert await count(engine) == 2


async def test_an_orm_flush_under_a_stale_phase_snapshot_is_refused_and_writes_nothing(
    engine: AsyncEngine, database_url: URL
) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from tests.integration.clinic_support import PATIENTS_PII, create_clinic_schema

    from clinic_app.models import PATIENTS, Patient  # isort: skip

    await create_clinic_schema(engine)
    settings = make_settings(database_url, poll_interval_seconds=30)  # no NOTIFY, slow poll
    watcher = PhaseWatcher(engine, settings, key_versions=frozenset({"v1"}), listen=False)
    codec = FieldCodec(
        PATIENTS_PII, FieldCipher(load_keyring(settings)), BlindIndex.from_settings(settings)
    )
    PATIENTS.bind(codec, lambda: watcher.behaviour(PATIENTS_PII.name), fence=watcher)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    def patient(i: int) -> Patient:
        return Patient(
            clinic_id=1, full_name=f"Ada {i}", email=f"ada{i}@example.org", date_of_birth=None,
            intake=None, balance=None, last_visit=None,
        )  # fmt: skip

    async def patients() -> int:
        async with engine.connect() as conn:
            found = await conn.execute(text("SELECT count(*) FROM clinic.patients"))
            return int(found.scalar_one())

    await watcher.start()
    try:
        async with sessions() as s:
            first = patient(1)
            s.add(first)
            await s.commit()
        async with engine.begin() as conn:  # the phase moves; this watcher is not told
            from dualwrite.state import registry

            st = await registry.get_migration(conn, PATIENTS_PII.name)
            await registry.compare_and_swap_phase(conn, st.name, st.version, Phase.DUAL_WRITE)
        async with sessions() as s:
            s.add(patient(2))
            with pytest.raises(FencedError, match="self-fencing"):
                await s.commit()
        async with sessions() as s:
            loaded = await s.get(Patient, first.id)
            assert loaded is not None
            loaded.full_name = "Grace Hopper"
            with pytest.raises(FencedError, match="acts under version 1 \\(plaintext\\)"):
                await s.commit()
        assert await patients() == 1
        async with engine.connect() as conn:
            name = await conn.execute(text("SELECT full_name FROM clinic.patients"))
            assert name.scalar_one() == "Ada 1"
    finally:
        PATIENTS.bind(codec, lambda: None)
        await watcher.stop()
