"""What a raw PostgreSQL page can still hold, parsed without the server (pure).

A page is searched three ways, because ``DROP COLUMN`` and ``UPDATE ... SET NULL`` rewrite
nothing and pruning does not zero the space it frees:

* as raw bytes: short values are stored inline and uncompressed, in live tuples, dead tuples
  and free space alike;
* for **inline compressed datums**: a 4-byte varlena header whose two low bits are ``10``
  (little-endian ``VARATT_IS_4B_C``), then ``va_tcinfo`` (raw size in 30 bits, method in 2:
  0 pglz, 1 lz4), then the compressed bytes -- found at every 4-byte-aligned offset, whether a
  line pointer still points at the tuple or not;
* in a TOAST relation, for **chunks**: heap tuples of ``(chunk_id oid, chunk_seq int4,
  chunk_data bytea)`` found at every 8-byte-aligned offset (``t_hoff = 24``, 3 attributes, no
  nulls), so chunks of dead values are reassembled too. A value's chunks joined in sequence
  order start with ``va_tcinfo`` when the value was compressed before being moved out of line.

>>> import struct
>>> from dualwrite.remanence import pglz
>>> payload = bytes([0x20]) + b"PLAIN" + bytes([0x07, 0x05])  # 5 literals, then 10 from 5 back
>>> datum = struct.pack("<II", (8 + len(payload)) << 2 | 2, 15) + payload
>>> page = bytes(100) + datum + bytes(8192 - 100 - len(datum))
>>> [(off, raw, method) for off, raw, method, _ in compressed_datums(page)]
[(100, 15, 0)]
>>> pglz.decompress(next(compressed_datums(page))[3], 15)
b'PLAINPLAINPLAIN'
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "Chunk",
    "CompressedValue",
    "ToastValues",
    "compressed_datums",
    "split_external",
    "toast_chunks",
]

PGLZ, LZ4 = 0, 1
MAX_INLINE_RAW = 1 << 20
"""Largest raw size believed for an inline compressed datum (pglz cannot shrink more than
about 90 times, and an inline datum is under a page)."""
MAX_RAW = (1 << 30) - 1
MAX_RATIO = 256
"""Neither pglz (at most 273 bytes per 2-byte reference) nor lz4 expands a stream more than
about 255 times: a header announcing more is not a compressed datum."""

_U32 = struct.Struct("<I")
# candidate starts, found by the C regex engine before any Python-level check: a 4-byte
# compressed-varlena header of a datum under 128 kB (low bits 10, third byte 0 or 1, fourth 0)
_VARLENA_4B_C = re.compile(
    b"(?=[" + bytes(b for b in range(256) if b & 3 == 2) + b"].[\x00\x01]\x00)", re.S
)
# and a TOAST tuple header: t_infomask2 low byte 3 (attributes), t_hoff 24 four bytes later
_TOAST_TUPLE = re.compile(b"(?=\x03...\x18)", re.S)
_TOAST_HEAD = struct.Struct("<HHB")  # t_infomask2, t_infomask, t_hoff at offset 18
_TOAST_IDS = struct.Struct("<Ii")


@dataclass(frozen=True, slots=True)
class CompressedValue:
    """A compressed payload and what its header announces."""

    rawsize: int
    method: int
    payload: bytes


def compressed_datums(page: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """``(offset, rawsize, method, payload)`` of every plausible inline compressed datum."""
    size = len(page)
    for match in _VARLENA_4B_C.finditer(page):
        off = match.start()
        if off % 4 or off > size - 9:
            continue
        header = _U32.unpack_from(page, off)[0]
        total = header >> 2
        if total <= 8 or total > size - off:
            continue
        tcinfo = _U32.unpack_from(page, off + 4)[0]
        rawsize, method = tcinfo & 0x3FFFFFFF, tcinfo >> 30
        if method > LZ4 or rawsize < total - 8 or rawsize > MAX_INLINE_RAW:
            continue
        if rawsize > MAX_RATIO * (total - 8) + 64:
            continue
        yield off, rawsize, method, bytes(page[off + 8 : off + total])


@dataclass(frozen=True, slots=True)
class Chunk:
    value_id: int
    seq: int
    data: bytes


def toast_chunks(page: bytes, max_chunk: int = 2048) -> Iterator[Chunk]:
    """Every plausible TOAST chunk tuple of a TOAST-relation page (live or dead)."""
    size = len(page)
    for match in _TOAST_TUPLE.finditer(page):
        off = match.start() - 18
        if off < 24 or off % 8 or off > size - 34:
            continue
        infomask2, infomask, hoff = _TOAST_HEAD.unpack_from(page, off + 18)
        if hoff != 24 or infomask2 & 0x07FF != 3 or infomask & 0x0001:
            continue
        value_id, seq = _TOAST_IDS.unpack_from(page, off + 24)
        if seq < 0 or seq > (1 << 20):
            continue
        at = off + 32
        first = page[at]
        if first & 0x01:  # 1-byte header (a short final chunk); 0x01 alone is a TOAST pointer
            length = first >> 1
            if first == 0x01 or length < 1 or at + length > size:
                continue
            data = page[at + 1 : at + length]
        else:
            header = _U32.unpack_from(page, at)[0]
            length = header >> 2
            if header & 0x03 or length <= 4 or length - 4 > max_chunk or at + length > size:
                continue
            data = page[at + 4 : at + length]
        yield Chunk(value_id, seq, bytes(data))


@dataclass
class ToastValues:
    """Chunks collected over a TOAST relation, reassembled per value id."""

    chunks: dict[int, dict[int, bytes]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, chunks: Iterable[Chunk]) -> None:
        for c in chunks:
            self.chunks[c.value_id].setdefault(c.seq, c.data)

    def values(self) -> Iterator[bytes]:
        """Each value's chunks joined in sequence order (a missing chunk ends the value)."""
        for parts in self.chunks.values():
            joined = bytearray()
            seq = 0
            while seq in parts:
                joined += parts[seq]
                seq += 1
            if joined:
                yield bytes(joined)
            elif parts:  # no chunk 0 left: the pieces still hold uncompressed bytes
                yield b"".join(parts[s] for s in sorted(parts))


def split_external(value: bytes) -> CompressedValue | None:
    """The compressed payload of a reassembled TOAST value, if it is one: it starts with
    ``va_tcinfo`` announcing a raw size larger than what follows and a known method."""
    if len(value) < 8:
        return None
    tcinfo = _U32.unpack_from(value, 0)[0]
    rawsize, method = tcinfo & 0x3FFFFFFF, tcinfo >> 30
    if method > LZ4 or rawsize <= len(value) - 4 or rawsize > MAX_RAW:
        return None
    if rawsize > MAX_RATIO * (len(value) - 4) + 64:
        return None
    return CompressedValue(rawsize, method, value[4:])
