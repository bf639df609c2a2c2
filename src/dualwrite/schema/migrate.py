"""Alembic, driven with an engine rather than a URL string.

``dualwrite db upgrade`` applies every revision up to and including the expand, stopping before
any revision marked ``dualwrite_contract = True`` (the one that drops plaintext); that one runs
only through ``dualwrite finalize`` once its guards pass.

>>> cfg = alembic_config()                                  # doctest: +SKIP
>>> await upgrade(engine, cfg)                              # doctest: +SKIP
>>> await current(engine, cfg)                              # doctest: +SKIP
'0003'
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.config import Settings
from dualwrite.errors import ConfigError, DualwriteError
from dualwrite.schema.ops import ALLOW_CONTRACT
from dualwrite.state.versions import upgrade_state_tables

CONTRACT_MARKER = "dualwrite_contract"
"""Module attribute that marks a revision as a contract (drops plaintext)."""


def alembic_config(ini: str | Path | None = None) -> Config:
    """Load ``alembic.ini`` (``ALEMBIC_CONFIG`` or ``./alembic.ini``)."""
    path = Path(ini or os.environ.get("ALEMBIC_CONFIG") or "alembic.ini")
    if not path.is_file():
        raise ConfigError(
            f"no Alembic configuration at {path} "
            "(run from the project folder or set ALEMBIC_CONFIG)"
        )
    return Config(str(path))


def configure_ddl_timeouts(connection: Connection, settings: Settings | None) -> None:
    """Set ``lock_timeout``/``statement_timeout`` for this session, then end the transaction.

    They bound a revision's own plain ``op.execute`` statements (which are not retried); the
    dualwrite operations of :mod:`dualwrite.schema.ops` set their own per step."""
    lock_ms = settings.ddl_lock_timeout_ms if settings else 500
    stmt_ms = settings.ddl_statement_timeout_ms if settings else 600_000
    connection.execute(text(f"SET lock_timeout = {int(lock_ms)}"))
    connection.execute(text(f"SET statement_timeout = {int(stmt_ms)}"))
    connection.commit()


def contract_scripts(cfg: Config) -> list[Script]:
    """Revisions whose module sets ``dualwrite_contract = True``, head first."""
    script = ScriptDirectory.from_config(cfg)
    return [rev for rev in script.walk_revisions() if getattr(rev.module, CONTRACT_MARKER, False)]


def contract_revisions(cfg: Config) -> list[str]:
    """Ids of the revisions marked as contract."""
    return [rev.revision for rev in contract_scripts(cfg)]


def expand_target(cfg: Config) -> str:
    """The highest revision ``db upgrade`` may reach: just before the first contract revision."""
    target = "head"
    for rev in contract_scripts(cfg):  # head first: the last one seen is the lowest
        down = rev.down_revision
        if not isinstance(down, str):
            raise ConfigError(f"contract revision {rev.revision} must have one parent")
        target = down
    return target


def _crosses_contract(cfg: Config, connection: Connection, target: str) -> str | None:
    script = ScriptDirectory.from_config(cfg)
    contracts = set(contract_revisions(cfg))
    ctx = MigrationContext.configure(connection)
    heads = ctx.get_current_heads()
    try:
        revs = list(script.iterate_revisions(target, heads or "base"))
    except Exception:
        raise DualwriteError(f"unknown revision {target!r}") from None
    for rev in revs:
        if rev.revision in contracts:
            return rev.revision
    return None


def runs_own_engine(cfg: Config) -> bool:
    """Whether the project's ``env.py`` builds its own engine (an unmodified ``alembic init`` or
    ``alembic init -t async`` environment) instead of using the connection dualwrite hands over
    in ``config.attributes["connection"]``."""
    try:
        env = Path(ScriptDirectory.from_config(cfg).dir) / "env.py"
        source = env.read_text(encoding="utf-8")
    except Exception:
        return False
    return 'attributes.get("connection")' not in source and "attributes['connection']" not in source


def _point_at(cfg: Config, engine: AsyncEngine) -> None:
    """Give an unmodified environment dualwrite's database when ``sqlalchemy.url`` is unset (or
    the template's placeholder): the async template takes the asyncpg URL, the sync one the
    same database through psycopg."""
    current = cfg.get_main_option("sqlalchemy.url") or ""
    if current and not current.startswith("driver://"):
        return
    env = Path(ScriptDirectory.from_config(cfg).dir) / "env.py"
    url = engine.url
    if "async_engine_from_config" not in env.read_text(encoding="utf-8"):
        url = url.set(drivername="postgresql+psycopg")
    cfg.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )


async def _run(
    engine: AsyncEngine, cfg: Config, settings: Settings | None, fn: Callable[[], None]
) -> None:
    cfg.attributes["settings"] = settings
    try:
        if runs_own_engine(cfg):  # its env.py connects by itself (and may call asyncio.run)
            _point_at(cfg, engine)
            await asyncio.to_thread(fn)
            return

        def go(sync_conn: Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            try:
                fn()
            finally:
                cfg.attributes.pop("connection", None)

        async with engine.connect() as conn:
            await conn.run_sync(go)
            await conn.commit()
    finally:
        cfg.attributes.pop(ALLOW_CONTRACT, None)


async def upgrade(
    engine: AsyncEngine,
    cfg: Config,
    revision: str | None = None,
    *,
    allow_contract: bool = False,
    settings: Settings | None = None,
) -> None:
    """Upgrade to ``revision`` (default: the expand target). Refuses to cross a contract revision
    unless ``allow_contract`` (only ``dualwrite finalize`` sets it). Then brings dualwrite's own
    state tables to their latest revision (:mod:`dualwrite.schema.state_revisions`)."""
    target = revision or expand_target(cfg)
    if not allow_contract:
        async with engine.connect() as conn:
            crossing = await conn.run_sync(lambda c: _crosses_contract(cfg, c, target))
        if crossing is not None:
            raise DualwriteError(
                f"revision {crossing} is a contract revision (drops plaintext): "
                "it runs only through `dualwrite finalize`"
            )
    else:
        cfg.attributes[ALLOW_CONTRACT] = True
    await _run(engine, cfg, settings, lambda: command.upgrade(cfg, target))
    async with engine.begin() as conn:  # dualwrite's own state tables: always the latest revision
        await upgrade_state_tables(conn)


async def downgrade(
    engine: AsyncEngine, cfg: Config, revision: str, *, settings: Settings | None = None
) -> None:
    """Downgrade to ``revision`` (``-1``, ``base``, or an id)."""
    await _run(engine, cfg, settings, lambda: command.downgrade(cfg, revision))


async def current(engine: AsyncEngine, cfg: Config) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""

    def go(conn: Connection) -> str | None:
        heads = MigrationContext.configure(conn).get_current_heads()
        return heads[0] if heads else None

    async with engine.connect() as conn:
        return await conn.run_sync(go)
