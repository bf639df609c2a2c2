"""The value codecs against real PostgreSQL casts: for many generated values of every supported
type, the canonical text computed in Python from the column type equals the canonical text of
what PostgreSQL stored (sent the way the app's driver sends it, read back the way a read does)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.crypto.values import value_type
from dualwrite.db import connect_raw

RNG = random.Random(11)
N = 400


@contextmanager
def local_timezone(name: str) -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def _datetimes(aware: bool) -> list[dt.datetime]:
    out = []
    for _ in range(N):
        year = RNG.choice([RNG.randint(1, 1999), RNG.randint(2000, 9998), 1999, 2000])
        base = dt.datetime(year, RNG.randint(1, 12), RNG.randint(1, 28), RNG.randint(0, 23),
                           RNG.randint(0, 59), RNG.randint(0, 59))  # fmt: skip
        us = RNG.choice(
            [0, 500, 499, 999_999, 999_500, 5, 50, 5000, 50_000, RNG.randint(0, 10**6 - 1)]
        )
        value = base.replace(microsecond=us)
        if aware:
            tz = dt.timezone(dt.timedelta(minutes=RNG.choice([0, 60, -300, 330, 765, -720])))
            value = value.replace(tzinfo=tz) if RNG.random() < 0.8 else value  # naive ones too
        out.append(value)
    return out


def _decimals() -> list[Any]:
    out: list[Any] = []
    for _ in range(N):
        digits = RNG.randint(1, 12)
        exp = RNG.randint(-8, 3)
        sign = RNG.choice([1, -1])
        d = decimal.Decimal(sign * RNG.randint(0, 10**digits)).scaleb(exp)
        out.append(d)
        out.append(
            float(RNG.choice([0.005, 1.005, 2.675, 0.125, -0.125, 12.345])) * RNG.randint(1, 9)
        )
    out += [0, -0.0, decimal.Decimal("-0.000"), decimal.Decimal("1E+2"), 7, -12, 99999.994]
    return out


def _documents() -> list[Any]:
    docs: list[Any] = [
        {"b": 1, "a": [1.0, 2.50, 1e20, -0.0, 1.5e-7, 10**30]},
        {"nested": {"z": None, "y": True, "x": "é ☃ \u2028"}, "n": 0.1},
        [1, "two", 3.0],
        "a string document",
        12.5,
        {"k" * 40: list(range(5)), "": ""},
    ]
    for _ in range(N // 4):
        docs.append({f"k{RNG.randint(0, 9)}": RNG.random() * 10 ** RNG.randint(-10, 25)
                     for _ in range(4)})  # fmt: skip
    return docs


CASES: dict[str, list[Any]] = {
    "timestamp(3) without time zone": _datetimes(aware=False),
    "timestamp without time zone": _datetimes(aware=False),
    "timestamp(0) with time zone": _datetimes(aware=True),
    "timestamp with time zone": _datetimes(aware=True),
    "numeric(10,2)": [v for v in _decimals() if abs(v) < 10**7],
    "numeric(6,-2)": [v for v in _decimals() if abs(v) < 10**7],
    "numeric": _decimals(),
    "date": [
        dt.date(RNG.randint(1, 9999), RNG.randint(1, 12), RNG.randint(1, 28)) for _ in range(N)
    ]
    + [dt.datetime(2024, 5, 6, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=-9)))],
    "smallint": [RNG.randint(-(2**15), 2**15 - 1) for _ in range(N)],
    "bigint": [RNG.randint(-(2**63), 2**63 - 1) for _ in range(N)],
    "boolean": [True, False],
    "character varying(5)": ["abc", "abcde", "abc       ", "é☃x  ", ""],
    "character(4)": ["ab", "abcd", "abcd   ", "", "a b"],
    "text": ["", " x ", "é☃", "a\nb"],
}


@pytest.mark.parametrize("sql_type", list(CASES))
async def test_canonical_text_matches_what_postgresql_stores(
    engine: AsyncEngine, sql_type: str
) -> None:
    vt = value_type(sql_type)
    conn = await connect_raw(engine)
    try:
        await conn.execute("SET TimeZone = 'Asia/Tokyo'")  # the server's zone never matters
        await conn.execute(f"CREATE TEMP TABLE v (i int, x {sql_type})")
        values = CASES[sql_type]
        with local_timezone("America/New_York"):  # a naive timestamptz is the host's local time
            expected = [vt.encode(v) for v in values]
            await conn.executemany("INSERT INTO v VALUES ($1, $2)", list(enumerate(values)))
        rows = await conn.fetch("SELECT x, x::text FROM v ORDER BY i")
        stored = [vt.from_driver(r[0]) for r in rows]
        assert stored == expected
        if vt.name == "numeric":
            assert [r[1] for r in rows] == expected  # PostgreSQL's own text output
        decoded = [vt.decode(t) for t in expected]
        assert decoded == [r[0] for r in rows]  # reads return the column's Python type
        # and the canonical text casts back to the same stored value
        back = await conn.fetch(
            f"SELECT $1::text::{vt.array_type} = x FROM v WHERE i = $2", expected[0], 0
        )
        assert back[0][0] is True
    finally:
        await conn.close()


async def test_jsonb_documents_as_sent_by_sqlalchemy_and_by_a_legacy_writer(
    engine: AsyncEngine,
) -> None:
    vt = value_type("jsonb")
    conn = await connect_raw(engine)
    try:
        await conn.execute("CREATE TEMP TABLE j (i int, x jsonb)")
        docs = _documents()
        await conn.executemany(
            "INSERT INTO j VALUES ($1, $2::text::jsonb)",
            [(i, json.dumps(d)) for i, d in enumerate(docs)],  # SQLAlchemy's JSONB bind
        )
        legacy = ['{"a": 1, "a": 2.50, "b": 1E+3}', '{"x": [1.000, -0]}', "  [ ]  "]
        await conn.executemany(
            "INSERT INTO j VALUES ($1, $2::jsonb)",
            [(1000 + i, t) for i, t in enumerate(legacy)],
        )
        rows = await conn.fetch("SELECT i, x FROM j ORDER BY i")
        got = {r[0]: vt.from_driver(r[1]) for r in rows}
        for i, d in enumerate(docs):
            assert got[i] == vt.encode(d)
            assert vt.decode(got[i]) == json.loads(rows[i][1])  # what a read returns
        assert got[1000] == '{"a":2.5,"b":1000}'
        assert got[1001] == '{"x":[1.0,0]}'
        assert got[1002] == "[]"
    finally:
        await conn.close()


def test_refused_values_fail_like_postgresql() -> None:
    with pytest.raises(ValueError, match="overflow"):
        value_type("numeric(4,2)").encode(decimal.Decimal("100"))
    with pytest.raises(ValueError, match="too long"):
        value_type("character varying(3)").encode("abcd")
    with pytest.raises(TypeError):
        value_type("integer").encode(True)
    with pytest.raises(ValueError, match="out of range"):
        value_type("smallint").encode(2**15)
    with pytest.raises(TypeError, match="naive"):
        value_type("timestamp").encode(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(ValueError, match="U\\+0000"):
        value_type("jsonb").encode({"a": "\x00"})
