"""Where the scan reads pages from, whichever the role allows (I/O).

* ``pageinspect`` -- ``get_raw_page()`` through shared buffers (what the server holds now,
  written or not); superuser only (the extension is created for the scan if it is available
  and missing, and dropped again);
* ``server_files`` -- ``pg_read_binary_file()`` of the relation's files (superuser, a member of
  ``pg_read_server_files``, or a role granted EXECUTE on it);
* ``local_files`` -- the relation's files read directly, when this process runs on the
  database host and may read its data directory.

The file sources read what is on disk: the scan checkpoints first where the role may
(superuser or ``pg_checkpoint``), and says so where it may not.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

__all__ = ["PageSource", "Relation", "checkpoint", "open_source", "relations"]

BATCH = 64

_RELATIONS_SQL = """
SELECT c.oid, c.oid::regclass::text, 'heap', pg_relation_size(c.oid), pg_relation_filepath(c.oid)
FROM pg_class c WHERE c.oid = to_regclass($1)
UNION ALL
SELECT i.indexrelid, i.indexrelid::regclass::text, 'index', pg_relation_size(i.indexrelid),
       pg_relation_filepath(i.indexrelid)
FROM pg_index i WHERE i.indrelid = to_regclass($1)
UNION ALL
SELECT t.oid, t.oid::regclass::text, 'toast', pg_relation_size(t.oid), pg_relation_filepath(t.oid)
FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = to_regclass($1)
UNION ALL
SELECT i.indexrelid, i.indexrelid::regclass::text, 'toast index', pg_relation_size(i.indexrelid),
       pg_relation_filepath(i.indexrelid)
FROM pg_class c JOIN pg_index i ON i.indrelid = c.reltoastrelid WHERE c.oid = to_regclass($1)
"""


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    name: str
    kind: str  # heap | index | toast | toast index
    size: int
    filepath: str | None


async def relations(conn: asyncpg.Connection, table: str) -> list[Relation]:
    """The table's heap, its indexes, its TOAST table and TOAST index."""
    rows = await conn.fetch(_RELATIONS_SQL, table)
    return [Relation(int(r[0]), str(r[1]), str(r[2]), int(r[3]), r[4]) for r in rows]


class PageSource:
    """Reads the main fork of a relation, page by page."""

    method = "none"

    def __init__(self, conn: asyncpg.Connection, block_size: int) -> None:
        self.conn, self.block_size = conn, block_size

    async def pages(self, rel: Relation) -> AsyncIterator[bytes]:
        blocks = rel.size // self.block_size
        for first in range(0, blocks, BATCH):
            for page in await self.read(rel, first, min(blocks, first + BATCH) - first):
                yield page

    async def read(self, rel: Relation, first: int, count: int) -> list[bytes]:
        raise NotImplementedError

    async def close(self) -> None:
        """Undo what opening the source did (an extension created for the scan)."""


class _PageInspect(PageSource):
    method = "pageinspect"
    created = False

    async def read(self, rel: Relation, first: int, count: int) -> list[bytes]:
        rows = await self.conn.fetch(
            "SELECT get_raw_page($1::text, 'main', g) FROM generate_series($2::int, $3::int) g "
            "ORDER BY g",
            rel.name,
            first,
            first + count - 1,
        )
        return [bytes(r[0]) for r in rows]

    async def close(self) -> None:
        if self.created and not self.conn.is_closed():
            await self.conn.execute("DROP EXTENSION IF EXISTS pageinspect")


class _ServerFiles(PageSource):
    method = "server_files"
    segment_blocks = 131072

    async def read(self, rel: Relation, first: int, count: int) -> list[bytes]:
        assert rel.filepath is not None
        out: list[bytes] = []
        block = first
        while block < first + count:
            segment, within = divmod(block, self.segment_blocks)
            n = min(first + count - block, self.segment_blocks - within)
            path = rel.filepath if segment == 0 else f"{rel.filepath}.{segment}"
            data = await self.conn.fetchval(
                "SELECT pg_read_binary_file($1, $2::bigint, $3::bigint, true)",
                path,
                within * self.block_size,
                n * self.block_size,
            )
            data = bytes(data or b"")
            out += [data[i : i + self.block_size] for i in range(0, len(data), self.block_size)]
            block += n
        return out


class _LocalFiles(_ServerFiles):
    method = "local_files"
    data_dir = ""

    async def read(self, rel: Relation, first: int, count: int) -> list[bytes]:
        assert rel.filepath is not None
        out: list[bytes] = []
        for block in range(first, first + count):
            segment, within = divmod(block, self.segment_blocks)
            name = rel.filepath if segment == 0 else f"{rel.filepath}.{segment}"
            with open(os.path.join(self.data_dir, name), "rb") as fh:
                fh.seek(within * self.block_size)
                out.append(fh.read(self.block_size))
        return out


async def _is_superuser(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))


async def _try_pageinspect(conn: asyncpg.Connection, block_size: int) -> PageSource | str:
    if not await _is_superuser(conn):
        return "pageinspect needs a superuser"
    installed = await conn.fetchval(
        "SELECT count(*) FROM pg_extension WHERE extname = 'pageinspect'"
    )
    source = _PageInspect(conn, block_size)
    if not installed:
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pageinspect'"
        )
        if not available:
            return "the pageinspect extension is not installed on the server"
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        source.created = True
    return source


async def _segment_blocks(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval(
        "SELECT setting::bigint FROM pg_settings WHERE name = 'segment_size'"
    )
    return int(value or 131072)


async def _try_server_files(
    conn: asyncpg.Connection, block_size: int, probe: Relation
) -> PageSource | str:
    source = _ServerFiles(conn, block_size)
    source.segment_blocks = await _segment_blocks(conn)
    try:
        await source.read(probe, 0, 1)
    except (
        asyncpg.exceptions.InsufficientPrivilegeError,
        asyncpg.exceptions.UndefinedFunctionError,
    ):
        return "pg_read_binary_file needs a superuser, pg_read_server_files or an EXECUTE grant"
    return source


async def _try_local_files(
    conn: asyncpg.Connection, block_size: int, probe: Relation
) -> PageSource | str:
    try:
        data_dir = await conn.fetchval("SELECT current_setting('data_directory')")
    except asyncpg.exceptions.InsufficientPrivilegeError:
        return "the data directory is not visible to this role (superuser or pg_read_all_settings)"
    path = os.path.join(str(data_dir), probe.filepath or "")
    if not os.access(path, os.R_OK):
        return "the relation files are not readable by this process (not on the database host?)"
    source = _LocalFiles(conn, block_size)
    source.segment_blocks = await _segment_blocks(conn)
    source.data_dir = str(data_dir)
    return source


async def open_source(
    conn: asyncpg.Connection, probe: Relation
) -> tuple[PageSource | None, int, list[str]]:
    """The first source the role can use, the block size, and why the others were not."""
    block_size = int(await conn.fetchval("SELECT current_setting('block_size')::int"))
    reasons: list[str] = []
    found = await _try_pageinspect(conn, block_size)
    if isinstance(found, str):
        reasons.append(found)
        found = await _try_server_files(conn, block_size, probe)
    if isinstance(found, str):
        reasons.append(found)
        found = await _try_local_files(conn, block_size, probe)
    if isinstance(found, str):
        reasons.append(found)
        return None, block_size, reasons
    return found, block_size, reasons


async def checkpoint(conn: asyncpg.Connection) -> str | None:
    """``CHECKPOINT`` (so the files hold every page); the reason when the role may not."""
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.exceptions.InsufficientPrivilegeError:
        return (
            "CHECKPOINT needs a superuser or pg_checkpoint: recently changed pages may not be "
            "on disk yet"
        )
    return None
