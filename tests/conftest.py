"""Shared fixtures: one embedded PostgreSQL per test session, fresh databases cloned from a
migrated template, keys for the crypto layer. Everything talks to real PostgreSQL."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.config import Settings
from dualwrite.db import make_engine
from dualwrite.testing import DatabaseFactory

ROOT = Path(__file__).resolve().parent.parent

# Fixed test keys (test-only; never used outside the test suite).
TEST_KEY_V1 = base64.b64encode(bytes(range(32))).decode()
TEST_KEY_V2 = base64.b64encode(bytes(range(100, 132))).decode()
TEST_BIDX_KEY = base64.b64encode(bytes(range(200, 232))).decode()


@pytest.fixture(scope="session", autouse=True)
def _run_from_project_root() -> Iterator[None]:
    old = Path.cwd()
    os.chdir(ROOT)
    yield
    os.chdir(old)


@pytest.fixture(scope="session")
def db_factory() -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory.start(ROOT / "alembic.ini")
    yield factory
    factory.close()


@pytest.fixture
async def database_url(db_factory: DatabaseFactory) -> AsyncIterator[URL]:
    """A fresh database migrated up to the expand (0003), dropped after the test."""
    url = await db_factory.create("0003")
    yield url
    await db_factory.drop(url)


@pytest.fixture
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url, pool_size=5)
    yield eng
    await eng.dispose()


def make_settings(database_url: URL | None = None, **overrides: object) -> Settings:
    """Settings for tests: fixed keys, the given database, fast polling."""
    values: dict[str, object] = {
        "encryption_keys": f"v1={TEST_KEY_V1}",
        "encryption_current_key": "v1",
        "blind_index_key": TEST_BIDX_KEY,
        "poll_interval_seconds": 0.2,
        "admin_token": "admin-test-token",
        "soak_seconds": 0,
    }
    if database_url is not None:
        values["database_url"] = database_url.render_as_string(hide_password=False)
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: URL) -> Settings:
    return make_settings(database_url)
