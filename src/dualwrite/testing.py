"""Throwaway PostgreSQL databases for tests and benchmarks (real PostgreSQL, never a mock).

:class:`DatabaseFactory` starts one embedded PostgreSQL in a temporary folder (or uses the
server of ``DUALWRITE_TEST_DATABASE_URL``), migrates a template database once, and clones fresh
databases from it in a fraction of a second::

    factory = DatabaseFactory.start()
    url = await factory.create(revision="0003")      # migrated up to the expand
    engine = make_engine(url)
    ...
    factory.close()

:func:`debian_postgres` starts a PostgreSQL of the Debian packages (``postgresql-15`` and,
for rewrite tests, ``postgresql-15-repack``) in a temporary folder, socket only, as the
``postgres`` system user when run as root::

    with debian_postgres(15) as url:
        factory = DatabaseFactory(server_url=url)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import URL, make_url

from dualwrite.db import execute_outside_transaction, make_engine, start_embedded
from dualwrite.schema import migrate


@dataclass
class DatabaseFactory:
    """Creates databases on one PostgreSQL server; migrated templates are cached per revision."""

    server_url: URL
    folder: Path | None = None
    alembic_ini: Path = Path("alembic.ini")
    _templates: dict[str, str] = field(default_factory=dict)
    _created: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, alembic_ini: str | Path = "alembic.ini") -> DatabaseFactory:
        external = os.environ.get("DUALWRITE_TEST_DATABASE_URL")
        if external:
            return cls(server_url=make_url(external), alembic_ini=Path(alembic_ini))
        folder = Path(tempfile.mkdtemp(prefix="dualwrite-test-"))
        url = start_embedded(folder / "pg", cleanup="delete")
        return cls(server_url=url, folder=folder, alembic_ini=Path(alembic_ini))

    def url_for(self, database: str) -> URL:
        return self.server_url.set(database=database)

    async def _admin(self, *statements: str) -> None:
        await execute_outside_transaction(self.server_url, *statements)

    async def _template(self, revision: str | None) -> str:
        key = revision or "empty"
        if key not in self._templates:
            name = f"dw_tpl_{key.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
            await self._admin(f"CREATE DATABASE {name}")
            if revision is not None:
                engine = make_engine(self.url_for(name), pool_size=1)
                try:
                    cfg = migrate.alembic_config(self.alembic_ini)
                    await migrate.upgrade(engine, cfg, revision, allow_contract=True)
                finally:
                    await engine.dispose()
            self._templates[key] = name
        return self._templates[key]

    async def create(self, revision: str | None = "0003") -> URL:
        """A fresh database migrated to ``revision`` (``None``: empty)."""
        template = await self._template(revision)
        name = f"dw_test_{uuid.uuid4().hex[:10]}"
        await self._admin(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        self._created.append(name)
        return self.url_for(name)

    async def drop(self, url: URL) -> None:
        await self._admin(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")

    def close(self) -> None:
        """Stop the embedded server (if this factory started one) and remove its folder."""
        if self.folder is None:
            return
        from dualwrite.db import stop_embedded

        try:
            stop_embedded(self.folder / "pg")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def debian_bindir(version: int) -> Path | None:
    """``/usr/lib/postgresql/<version>/bin`` when that server is installed."""
    bindir = Path(f"/usr/lib/postgresql/{version}/bin")
    return bindir if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists() else None


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def debian_postgres(version: int = 15) -> Iterator[URL]:
    """A throwaway cluster of the Debian PostgreSQL ``version`` (socket in its own folder,
    trust authentication, no TCP), stopped and deleted afterwards."""
    bindir = debian_bindir(version)
    if bindir is None:
        raise FileNotFoundError(f"PostgreSQL {version} is not installed (postgresql-{version})")
    folder = Path(tempfile.mkdtemp(prefix=f"dualwrite-pg{version}-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")

    def run(args: list[str]) -> None:
        subprocess.run(_as_postgres(args), check=True, capture_output=True, timeout=120)

    try:
        run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C.UTF-8"]
        )  # fmt: skip
        options = f"-k {folder} -c listen_addresses='' -p 5432"
        run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
             str(folder / "log"), "-w", "start"]
        )  # fmt: skip
        yield URL.create(
            "postgresql+asyncpg",
            username="postgres",
            database="postgres",
            query={"host": str(folder), "port": "5432"},
        )
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(folder, ignore_errors=True)
