"""Realistic fake plaintext clients, loaded fast with COPY.

Names, emails, phones, addresses and a few hundred bytes of medical history, spread over
``workspaces`` workspaces. Deterministic for a given ``seed``.

>>> rows = list(generate_rows(2, workspaces=1, seed=7))
>>> len(rows), len(rows[0])
(2, 13)
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

FIRST = [
    "Ana",
    "Ben",
    "Chloé",
    "Dmitri",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jamal",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Oskar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Viktor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoë",
    "José",
    "Ngozi",
    "Søren",
    "Aisha",
    "Liam",
    "Mei",
]
LAST = [
    "Abara",
    "Bianchi",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Haddad",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "López",
    "Müller",
    "Nakamura",
    "O'Brien",
    "Petrov",
    "Quintero",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Umarov",
    "Vargas",
    "Wójcik",
    "Xu",
    "Yilmaz",
    "Zhang",
    "Ndiaye",
    "Øberg",
]
STREETS = [
    "Oak",
    "Maple",
    "Cedar",
    "Pine",
    "Elm",
    "Birch",
    "Willow",
    "Harbor",
    "Mill",
    "Station",
    "Church",
    "Park",
]
CITIES = [
    "Springfield",
    "Riverton",
    "Lakeside",
    "Fairview",
    "Greenville",
    "Kingston",
    "Ashford",
    "Bristol",
]
CONDITIONS = (
    "generalized anxiety disorder",
    "major depressive episode",
    "insomnia",
    "PTSD",
    "panic attacks",
    "ADHD (adult)",
    "bereavement",
    "social anxiety",
    "OCD symptoms",
    "adjustment disorder",
    "chronic pain",
    "substance use in remission",
)
NOTES = (
    "Reports improvement with CBT homework.",
    "Sleep diary shows 5-6h per night.",
    "Medication reviewed by GP last month.",
    "Discussed coping strategies for work stress.",
    "No current risk indicators.",
    "Family history of depression (mother).",
    "Prefers morning sessions.",
    "Exposure hierarchy started.",
    "Journaling daily.",
)

COLUMNS = (
    "id",
    "workspace_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "address",
    "medical_history",
    "emergency_contact_name",
    "emergency_contact_phone",
    "is_active",
    "created_at",
    "updated_at",
)


def generate_rows(rows: int, *, workspaces: int = 10, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """Yield ``rows`` client tuples in :data:`COLUMNS` order."""
    rnd = random.Random(seed)
    ws_ids = [uuid.UUID(int=rnd.getrandbits(128), version=4) for _ in range(max(1, workspaces))]
    base = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(rows):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        ec_first, ec_last = rnd.choice(FIRST), rnd.choice(LAST)
        email = f"{first.lower()}.{last.lower()}{i}@example.org".replace("'", "")
        phone = f"+1 ({rnd.randint(200, 989)}) 555-{rnd.randint(0, 9999):04d}"
        address = (
            f"{rnd.randint(1, 9999)} {rnd.choice(STREETS)} St, {rnd.choice(CITIES)}, "
            f"{rnd.randint(10000, 99999)}"
        )
        history = (
            f"Presenting: {rnd.choice(CONDITIONS)}; history of {rnd.choice(CONDITIONS)}. "
            + " ".join(rnd.choice(NOTES) for _ in range(rnd.randint(3, 7)))
        )
        created = base + timedelta(seconds=rnd.randint(0, 60 * 86400))
        yield (
            uuid.UUID(int=rnd.getrandbits(128), version=4),
            ws_ids[i % len(ws_ids)],
            first,
            last,
            email,
            phone,
            address,
            history,
            f"{ec_first} {ec_last}",
            f"+1 555 {rnd.randint(100, 999)} {rnd.randint(1000, 9999)}",
            rnd.random() > 0.05,
            created,
            created,
        )


async def seed_clients(
    engine: AsyncEngine, rows: int, *, workspaces: int = 10, seed: int = 1, chunk: int = 20_000
) -> int:
    """COPY ``rows`` fake clients into ``clients``; returns the number of rows written."""
    written = 0
    gen = generate_rows(rows, workspaces=workspaces, seed=seed)
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        while written < rows:
            batch = [r for _, r in zip(range(chunk), gen, strict=False)]
            if not batch:
                break
            await driver.copy_records_to_table("clients", records=batch, columns=list(COLUMNS))
            written += len(batch)
        await conn.commit()
    return written
