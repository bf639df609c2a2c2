"""The benches' load client: keep-alive HTTP/1.1 over asyncio streams, as light as a load
generator must be.

A load client that shares the machine with the servers under measure takes CPU from them. An
``httpx.AsyncClient`` spends about as much CPU per request as a small FastAPI route does, so on
a 2-core machine a p95 ratio measured through it partly measures the client. This one writes a
``GET`` with the fixed headers and reads the status line, the headers and a ``Content-Length``
body (the only framing the services answer reads with; anything else is an error), tens of
microseconds per request. Connections are reused (one per concurrent request at most); a
reused one the server closed while it was idle (its keep-alive timeout) is replaced, once per
idle connection, as any HTTP client does for an idempotent ``GET``.

    >>> import asyncio
    >>> asyncio.run(LoadClient("http://127.0.0.1:9", {}).aclose())
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

__all__ = ["HttpError", "HttpxClient", "LoadClient"]


class HttpError(RuntimeError):
    """The server closed the connection or answered with framing the client does not read."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise HttpError("a chunked answer: the load client reads Content-Length only")
        if length is None:
            raise HttpError(f"an answer without Content-Length (HTTP {status})")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class LoadClient:
    """``await client.get(path)`` -> ``(status, body)`` against ``base`` (``http://host:port``),
    with ``headers`` on every request."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        fixed = [f"Host: {self.host}:{self.port}", *(f"{k}: {v}" for k, v in headers.items())]
        self._head = "".join(f"{h}\r\n" for h in fixed).encode()
        self._idle: list[_Conn] = []
        self._all: list[_Conn] = []

    async def get(self, path: str) -> tuple[int, bytes]:
        request = b"GET " + path.encode() + b" HTTP/1.1\r\n" + self._head + b"\r\n"
        while self._idle:  # a kept-alive connection the server may have closed meanwhile
            conn = self._idle.pop()
            try:
                got = await conn.get(request)
            except (OSError, asyncio.IncompleteReadError):
                self._drop(conn)  # closed while idle (the server's keep-alive timeout): retry
                continue
            except (asyncio.LimitOverrunError, ValueError) as exc:
                self._drop(conn)
                raise HttpError(f"GET {path}: {type(exc).__name__}") from None
            self._idle.append(conn)
            return got
        try:
            conn = await self._open()
            got = await conn.get(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise HttpError(f"GET {path}: {type(exc).__name__}") from None
        self._idle.append(conn)
        return got

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        self._all.remove(conn)

    async def _open(self) -> _Conn:
        conn = _Conn(*await asyncio.open_connection(self.host, self.port))
        self._all.append(conn)
        return conn

    async def aclose(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()


class HttpxClient:
    """The same interface over ``httpx.AsyncClient`` (``--load-client httpx``: the comparison)."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        limits = httpx.Limits(max_connections=16)
        self._client = httpx.AsyncClient(base_url=base, timeout=60, limits=limits, headers=headers)

    async def get(self, path: str) -> tuple[int, bytes]:
        try:
            resp = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise HttpError(f"GET {path}: {type(exc).__name__}") from None
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        await self._client.aclose()
