"""dualwrite.runtime.reads on real PostgreSQL: a read prepared once with bind parameters answers
exactly what ``EncryptedTable.fetch`` answers with the values inlined, in every phase (the
fallback to plaintext and the shadow sample included), draws its statements once per phase
behaviour, and sends the same SQL for every request."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Integer, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.phases import Phase, ReadSource, behaviour
from tests.integration.test_orm import count_statements, make_table, person

PHASES = [p for p in Phase if p is not Phase.FINALIZED]


async def seed(
    engine: AsyncEngine, enc: Any, ws: uuid.UUID, n: int
) -> tuple[list[uuid.UUID], uuid.UUID]:
    """``n`` clients written in dual_write, one more by a writer that knows nothing of dualwrite
    (plaintext only: every read phase must still serve it, by fallback where it reads
    ciphertext); all ids, sorted, and the legacy one."""
    async with engine.begin() as conn:
        ids = [(await enc.insert(conn, behaviour(Phase.DUAL_WRITE), person(ws, i)))["id"]
               for i in range(n)]  # fmt: skip
        legacy = uuid.uuid4()
        await conn.execute(
            text(
                "INSERT INTO clients (id, workspace_id, first_name, email, is_active, created_at,"
                " updated_at) VALUES (:i, :w, 'Grace', 'grace@example.org', true, now(), now())"
            ),
            {"i": legacy, "w": ws},
        )
    return sorted([*ids, legacy]), legacy


@pytest.mark.parametrize("phase", PHASES)
async def test_a_prepared_read_answers_what_fetch_answers(
    engine: AsyncEngine, phase: Phase
) -> None:
    enc, _, events = make_table()
    ws, other = uuid.uuid4(), uuid.uuid4()
    ids, legacy = await seed(engine, enc, ws, 5)
    await seed(engine, enc, other, 2)  # never visible through ws
    c, b = enc.c, behaviour(phase)
    one = enc.prepare(c.id == bindparam("id"), c.workspace_id == bindparam("ws"))
    page = enc.prepare(
        c.workspace_id == bindparam("ws"),
        c.id > bindparam("after"),
        order_by=c.id,
        limit=bindparam("limit", type_=Integer),
    )
    async with engine.connect() as conn:
        for client in ids:
            want = await enc.fetch(conn, b, c.id == client, c.workspace_id == ws)
            assert await one.fetch(conn, b, id=client, ws=ws) == want and len(want) == 1
        assert await one.fetch(conn, b, id=ids[0], ws=other) == []
        for after, limit in ((ids[0], 2), (ids[1], 10), (ids[-1], 3)):
            want = await enc.fetch(
                conn, b, c.workspace_id == ws, c.id > after, order_by=c.id, limit=limit
            )
            got = await page.fetch(conn, b, ws=ws, after=after, limit=limit)
            assert got == want
            assert [r["id"] for r in got] == [i for i in ids if i > after][:limit]
        grace = await one.fetch(conn, b, id=legacy, ws=ws)
    # the legacy row is served from its plaintext (a counted fallback where reads are encrypted)
    assert [(r["first_name"], r["email"]) for r in grace] == [("Grace", "grace@example.org")]
    assert (events.counts.get("read_fallback", 0) > 0) is (b.reads_from is ReadSource.CIPHERTEXT)


async def test_statements_are_drawn_once_per_behaviour_and_send_the_same_sql(
    engine: AsyncEngine,
) -> None:
    enc, _, _ = make_table()
    ws = uuid.uuid4()
    ids, _ = await seed(engine, enc, ws, 3)
    read = enc.prepare(enc.c.id == bindparam("id"), enc.c.workspace_id == bindparam("ws"))
    b = behaviour(Phase.READ_SWITCH)
    assert read.narrow_statement(b) is read.narrow_statement(b)
    assert read.statement(b) is read.statement(b)
    assert read.statement(b) is not read.statement(behaviour(Phase.BACKFILL))
    with count_statements(engine) as seen:
        async with engine.connect() as conn:
            for client in ids:
                assert len(await read.fetch(conn, b, id=client, ws=ws)) == 1
    reads = [s for s in seen if "FROM clients" in s]  # not the pool's connection set-up
    assert len(reads) == len(ids) and len(set(reads)) == 1  # one statement per read, values bound
    assert str(ids[0]) not in reads[0]


async def test_a_sampled_prepared_read_compares_every_row(engine: AsyncEngine) -> None:
    """The shadow sample works through a prepared read as through ``fetch``: a drawn statement
    selects both sources in full and compares all its rows, an undrawn one none."""
    draws = iter([0.1, 0.9])
    enc, metrics, _ = make_table(shadow_sample_rate=0.5, sample=lambda: next(draws))
    ws = uuid.uuid4()
    async with engine.begin() as conn:
        for i in range(3):
            await enc.insert(conn, behaviour(Phase.DUAL_WRITE), person(ws, i))
    read = enc.prepare(enc.c.workspace_id == bindparam("ws"), order_by=enc.c.id)
    async with engine.connect() as conn:
        for _ in range(2):
            assert len(await read.fetch(conn, behaviour(Phase.READ_SWITCH), ws=ws)) == 3
    assert metrics.value("dualwrite_shadow_reads_total", migration="clients_pii") == 3
