"""The whole phase walk through HTTP on real PostgreSQL: same answers in every phase, the
columns each phase writes, ciphertexts that decrypt with DESIGN §3 associated data, no write
lost across phase flips, the stale-ciphertext guard."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.metrics import Metrics
from dualwrite.phases import Phase, behaviour
from dualwrite.schema import migrate
from tests.conftest import make_settings
from tests.integration.clients_support import (
    FIELDS,
    decrypt_v1,
    encrypt_missing,
    new_client,
    purge_plaintext,
    raw_rows,
    running_app,
    set_phase,
)

SEARCHABLE = {"email": "email_bidx", "phone": "phone_bidx"}


async def check_answers(
    http: httpx.AsyncClient, ws: uuid.UUID, expected: dict[str, dict[str, Any]]
) -> None:
    """GET, list and search answer exactly ``expected`` (id -> plain fields)."""
    for cid, fields in expected.items():
        r = await http.get(f"/workspaces/{ws}/clients/{cid}")
        assert r.status_code == 200, r.text
        assert {f: r.json()[f] for f in FIELDS} == fields
    page = (await http.get(f"/workspaces/{ws}/clients", params={"limit": 500})).json()
    assert {c["id"]: {f: c[f] for f in FIELDS} for c in page["items"]} == expected
    for cid, fields in expected.items():
        for param, value in (
            ("email", fields["email"].upper()),
            ("phone", fields["phone"]),
            ("name", fields["first_name"]),
        ):
            r = await http.get(f"/workspaces/{ws}/clients/search", params={param: value})
            assert [c["id"] for c in r.json()["items"]] == [cid], (param, r.text)


async def check_storage(
    engine: AsyncEngine, phase: Phase, expected: dict[str, dict[str, Any]], bidx: Any
) -> None:
    """Stored columns match the phase table; every ciphertext is v1 and decrypts right."""
    b = behaviour(phase)
    rows = await raw_rows(engine)
    for cid, fields in expected.items():
        row = rows[cid]
        assert ("first_name" in row) == b.plaintext_column_exists
        for f in FIELDS:
            ct = row[f"{f}_encrypted"]
            if b.plaintext_column_exists and not b.writes_plaintext:
                assert row[f] is None  # contract: purged or written NULL
            elif b.plaintext_column_exists:
                assert row[f] == fields[f]
            if b.writes_ciphertext and fields[f] is not None:
                assert ct is not None and bytes(ct).startswith(b"v1:"), (phase, f)
                assert decrypt_v1(ct, f, cid) == fields[f]
            if f in SEARCHABLE and ct is not None:
                assert row[SEARCHABLE[f]] == bidx.compute(fields[f], f)


async def test_every_phase_gives_the_same_answers(engine: AsyncEngine, database_url: URL) -> None:
    async with running_app(
        make_settings(database_url, shadow_read_sample_rate=1.0), token=None
    ) as (app, http):
        ws = uuid.uuid4()
        expected: dict[str, dict[str, Any]] = {}
        bidx = app.state.codec.blind_index
        for i, phase in enumerate(Phase):
            if phase is Phase.BACKFILL:
                await set_phase(engine, app, phase)
                await encrypt_missing(engine, app)
            elif phase is Phase.CONTRACT:
                await set_phase(engine, app, phase)
            elif phase is Phase.FINALIZED:
                await migrate.upgrade(engine, migrate.alembic_config(), "0004", allow_contract=True)
                await engine.dispose()  # this test's own cached `SELECT *` plans
                # the app still observes contract while the plaintext columns are gone: it
                # retries without them, and nothing fails
                assert app.state.watcher.state("clients_pii").phase is Phase.CONTRACT
                await check_answers(http, ws, expected)
                first = next(iter(expected))
                r = await http.patch(f"/workspaces/{ws}/clients/{first}", json={"address": "w"})
                assert r.status_code == 200, r.text
                expected[first]["address"] = "w"
                await set_phase(engine, app, phase)
            else:
                await set_phase(engine, app, phase)
            # create one, update the previous one's phone and clear its address
            r = await http.post(f"/workspaces/{ws}/clients", json=new_client(i))
            assert r.status_code == 201, (phase, r.text)
            expected[r.json()["id"]] = {f: r.json()[f] for f in FIELDS}
            if i:
                prev = list(expected)[i - 1]
                change = {"phone": f"+44 20 7946 {i:04d}", "address": None}
                r = await http.patch(f"/workspaces/{ws}/clients/{prev}", json=change)
                assert r.status_code == 200, (phase, r.text)
                expected[prev].update(change)
            await check_answers(http, ws, expected)
            if phase is Phase.CONTRACT:  # written in contract: plaintext NULL; then purge the rest
                rows = await raw_rows(engine)
                new_id = list(expected)[i]
                assert all(rows[new_id][f] is None for f in FIELDS)
                assert rows[prev]["phone"] is None and rows[prev]["first_name"] is not None
                await purge_plaintext(engine)
                await check_answers(http, ws, expected)
            if phase not in (
                Phase.PLAINTEXT,
                Phase.DUAL_WRITE,
            ):  # rows of earlier phases: backfilled
                await check_storage(engine, phase, expected, bidx)
        shadow = app.state.codec.metrics
        assert shadow.value("dualwrite_shadow_reads_total", migration="clients_pii") > 0
        for f in FIELDS:
            assert not shadow.value(
                "dualwrite_shadow_read_mismatches_total", migration="clients_pii", field=f
            )


async def test_dual_write_stores_both_and_plaintext_phase_none(
    engine: AsyncEngine, database_url: URL
) -> None:
    async with running_app(make_settings(database_url), token=None) as (app, http):
        ws = uuid.uuid4()
        legacy = (await http.post(f"/workspaces/{ws}/clients", json=new_client(1))).json()
        await set_phase(engine, app, Phase.DUAL_WRITE)
        fresh = (await http.post(f"/workspaces/{ws}/clients", json=new_client(2))).json()
        await http.patch(
            f"/workspaces/{ws}/clients/{legacy['id']}", json={"email": "new@example.org"}
        )
        rows = await raw_rows(engine)
        assert all(rows[legacy["id"]][f"{f}_encrypted"] is None for f in FIELDS if f != "email")
        assert (
            decrypt_v1(rows[legacy["id"]]["email_encrypted"], "email", legacy["id"])
            == "new@example.org"
        )
        for f in FIELDS:
            value = rows[fresh["id"]][f]
            assert rows[fresh["id"]][f] == fresh[f]
            ct = rows[fresh["id"]][f"{f}_encrypted"]
            assert (ct is None) == (value is None)
            if ct is not None:
                assert decrypt_v1(ct, f, fresh["id"]) == value


async def test_stale_guard_and_fallback_through_http(
    engine: AsyncEngine, database_url: URL
) -> None:
    metrics = Metrics()
    async with running_app(make_settings(database_url), metrics=metrics, token=None) as (app, http):
        await set_phase(engine, app, Phase.DUAL_WRITE)
        ws = uuid.uuid4()
        c = (await http.post(f"/workspaces/{ws}/clients", json=new_client(1))).json()
        async with engine.begin() as conn:  # an old app version: plaintext only
            await conn.execute(
                text("UPDATE clients SET email = 'legacy@example.org' WHERE id = :i"),
                {"i": uuid.UUID(c["id"])},
            )
        row = (await raw_rows(engine))[c["id"]]
        assert row["email_encrypted"] is None and row["email_bidx"] is None  # never stale
        assert row["phone_encrypted"] is not None
        await set_phase(engine, app, Phase.BACKFILL)
        await set_phase(engine, app, Phase.READ_SWITCH)
        got = (await http.get(f"/workspaces/{ws}/clients/{c['id']}")).json()
        assert got["email"] == "legacy@example.org"
        assert (
            metrics.value("dualwrite_read_fallback_total", migration="clients_pii", field="email")
            == 1
        )
        found = await http.get(
            f"/workspaces/{ws}/clients/search", params={"email": "LEGACY@example.org"}
        )
        assert [x["id"] for x in found.json()["items"]] == [c["id"]]


async def test_phase_flips_under_concurrent_updates_lose_nothing(
    engine: AsyncEngine, database_url: URL
) -> None:
    async with running_app(make_settings(database_url), token=None) as (app, http):
        await set_phase(engine, app, Phase.DUAL_WRITE)
        ws = uuid.uuid4()
        ids = [
            (await http.post(f"/workspaces/{ws}/clients", json=new_client(i))).json()["id"]
            for i in range(12)
        ]
        final: dict[str, dict[str, str]] = {}
        stop = asyncio.Event()

        async def writer(mine: list[str], seed: int) -> int:
            rnd, n = random.Random(seed), 0
            while not stop.is_set() or n < 30:
                cid = rnd.choice(mine)
                change = {"phone": f"+1 555 {seed:03d} {n:04d}", "medical_history": f"w{seed} n{n}"}
                r = await http.patch(f"/workspaces/{ws}/clients/{cid}", json=change)
                assert r.status_code == 200, r.text
                final[cid] = change
                n += 1
            return n

        async def flipper() -> None:
            for phase in (
                Phase.BACKFILL,
                Phase.READ_SWITCH,
                Phase.BACKFILL,
                Phase.DUAL_WRITE,
                Phase.BACKFILL,
                Phase.READ_SWITCH,
                Phase.BACKFILL,
                Phase.DUAL_WRITE,
            ):
                await asyncio.sleep(0.02)
                await set_phase(engine, app, phase)
            stop.set()

        counts = await asyncio.gather(*(writer(ids[k::4], k) for k in range(4)), flipper())
        assert sum(c for c in counts if c) >= 120
        rows = await raw_rows(engine)
        bidx = app.state.codec.blind_index
        for cid, change in final.items():
            row = rows[cid]
            for f, value in change.items():
                assert row[f] == value
                assert decrypt_v1(row[f"{f}_encrypted"], f, cid) == value
            assert row["phone_bidx"] == bidx.compute(change["phone"], "phone")
        await set_phase(engine, app, Phase.BACKFILL)
        await set_phase(engine, app, Phase.READ_SWITCH)
        for cid, change in final.items():
            got = (await http.get(f"/workspaces/{ws}/clients/{cid}")).json()
            assert {f: got[f] for f in change} == change


async def test_contract_search_finds_a_row_a_legacy_writer_changed(
    engine: AsyncEngine, database_url: URL
) -> None:
    """From contract on, reads still fall back to plaintext where the guard trigger cleared a
    legacy writer's ciphertext; search must find those rows too, not only by blind index."""
    async with running_app(make_settings(database_url), token=None) as (app, http):
        await set_phase(engine, app, Phase.DUAL_WRITE)
        ws = uuid.uuid4()
        c = (await http.post(f"/workspaces/{ws}/clients", json=new_client(7))).json()
        other = (await http.post(f"/workspaces/{ws}/clients", json=new_client(8))).json()
        for phase in (Phase.BACKFILL, Phase.READ_SWITCH, Phase.CONTRACT):
            await set_phase(engine, app, phase)
        async with engine.begin() as conn:  # a writer that knows nothing of dualwrite
            await conn.execute(
                text("UPDATE clients SET email = 'Moved.On@Example.org' WHERE id = :i"),
                {"i": uuid.UUID(c["id"])},
            )
        row = (await raw_rows(engine))[c["id"]]
        assert row["email_encrypted"] is None and row["email_bidx"] is None  # cleared
        got = (await http.get(f"/workspaces/{ws}/clients/{c['id']}")).json()
        assert got["email"] == "Moved.On@Example.org"  # the read falls back to plaintext
        found = await http.get(
            f"/workspaces/{ws}/clients/search", params={"email": " moved.on@example.ORG"}
        )
        assert found.status_code == 200
        assert [x["id"] for x in found.json()["items"]] == [c["id"]]
        old = await http.get(
            f"/workspaces/{ws}/clients/search", params={"email": "ada7@example.org"}
        )
        assert old.json()["items"] == []  # the old value is gone
        by_index = await http.get(
            f"/workspaces/{ws}/clients/search", params={"email": "ada8@example.org"}
        )
        assert [x["id"] for x in by_index.json()["items"]] == [other["id"]]
