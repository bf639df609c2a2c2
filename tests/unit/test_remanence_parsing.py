"""The pure parts of the remanence scan: pglz decompression, page carving, TOAST reassembly,
needles (no database; PostgreSQL's own output is checked in the integration tests)."""

from __future__ import annotations

import struct

import pytest

from dualwrite.remanence import pglz
from dualwrite.remanence.needles import MIN_NEEDLE, Matcher, needles_for
from dualwrite.remanence.pages import (
    ToastValues,
    compressed_datums,
    split_external,
    toast_chunks,
)


def literals(data: bytes) -> bytes:
    """A pglz stream of literals only (control bytes of 0)."""
    out = bytearray()
    for i in range(0, len(data), 8):
        out.append(0)
        out += data[i : i + 8]
    return bytes(out)


def test_pglz_literals_and_a_long_back_reference_with_the_extra_length_byte() -> None:
    # "abc" then a reference 3 back, 18 + 200 long (4-bit length 15 => one more length byte)
    stream = bytes([0b0000_1000]) + b"abc" + bytes([0x0F, 0x03, 200])
    assert pglz.decompress(stream, 3 + 218) == b"abc" + (b"abc" * 80)[:218]


def test_pglz_refuses_a_reference_before_the_start_and_a_wrong_size() -> None:
    with pytest.raises(pglz.PglzError):
        pglz.decompress(bytes([0b0000_0001, 0x01, 0x05]), 4)  # offset 5 of an empty output
    with pytest.raises(pglz.PglzError):
        pglz.decompress(literals(b"12345678"), 9)
    assert pglz.decompress(literals(b"12345678"), 9, complete=False) == b"12345678"


def test_pglz_round_trips_literal_streams_of_any_length() -> None:
    for n in (1, 7, 8, 9, 100, 4096):
        data = bytes((i * 37) % 251 for i in range(n))
        assert pglz.decompress(literals(data), n) == data


def repeats(unit: bytes, total: int) -> bytes:
    """A pglz stream of ``unit`` as literals, then back-references of up to 273 bytes copying
    it (``unit``: a multiple of 8 bytes, at most 4095) until ``total`` bytes."""
    assert len(unit) % 8 == 0
    out = bytearray(literals(unit))
    done = len(unit)
    refs = []
    while done < total:
        n = min(273, total - done, 4095)
        n = max(n, 3)
        refs.append(n)
        done += n
    for i in range(0, len(refs), 8):
        group = refs[i : i + 8]
        out.append((1 << len(group)) - 1)
        for n in group:
            off = len(unit)
            if n >= 18:
                out += bytes([0x0F | ((off >> 4) & 0xF0), off & 0xFF, n - 18])
            else:
                out += bytes([(n - 3) | ((off >> 4) & 0xF0), off & 0xFF])
    return bytes(out)


def tuple_bytes(value_id: int, seq: int, chunk: bytes) -> bytes:
    """A TOAST chunk heap tuple: header (t_infomask2 = 3 attributes, t_hoff = 24), then
    chunk_id, chunk_seq and chunk_data with a 4-byte varlena header."""
    header = bytes(18) + struct.pack("<HHB", 3, 0x0800, 24) + bytes(1)
    body = struct.pack("<Ii", value_id, seq) + struct.pack("<I", (len(chunk) + 4) << 2) + chunk
    raw = header + body
    return raw + bytes(-len(raw) % 8)


def page_of(*tuples: bytes, size: int = 8192) -> bytes:
    body = b"".join(tuples)
    start = size - len(body)
    start -= start % 8
    return bytes(start) + body + bytes(size - start - len(body))


def test_toast_chunks_of_a_value_are_reassembled_in_order_and_expanded() -> None:
    unit = b"The patient reports sleeping better.    "
    raw = (unit * 80)[:3000]
    stream = repeats(unit, len(raw))
    assert pglz.decompress(stream, len(raw)) == raw
    value = struct.pack("<I", len(raw)) + stream  # va_tcinfo (pglz), then the stream
    first, second = value[:40], value[40:]
    page = page_of(tuple_bytes(9001, 1, second), tuple_bytes(9001, 0, first))
    found = list(toast_chunks(page))
    assert sorted((c.value_id, c.seq) for c in found) == [(9001, 0), (9001, 1)]
    values = ToastValues()
    values.add(found)
    [joined] = list(values.values())
    assert joined == value
    external = split_external(joined)
    assert external is not None and external.method == 0 and external.rawsize == len(raw)
    assert pglz.decompress(external.payload, external.rawsize) == raw


def test_an_uncompressed_value_is_not_taken_for_a_compressed_one() -> None:
    assert split_external(b"plain text of a value, not a tcinfo header" * 3) is None


def test_inline_compressed_datums_are_found_at_any_aligned_offset() -> None:
    raw = b"ABCDEFGHABCDEFGHABCDEFGH"
    stream = bytes([0b0000_0000]) + raw[:8] + bytes([0b0000_0001, 0x0D, 0x08])  # 16 from 8 back
    datum = struct.pack("<II", (8 + len(stream)) << 2 | 2, len(raw)) + stream
    page = bytes(4000) + datum + bytes(8192 - 4000 - len(datum))
    [(off, rawsize, method, payload)] = [d for d in compressed_datums(page) if d[1] == len(raw)]
    assert (off, rawsize, method) == (4000, len(raw), 0)
    assert pglz.decompress(payload, rawsize) == raw


def test_needles_skip_short_values_and_cut_long_ones() -> None:
    assert needles_for("x" * (MIN_NEEDLE - 1)) == []
    long = "".join(chr(ord("a") + i % 26) for i in range(500))
    cut = needles_for(long)
    assert len(cut) == 3 and all(n in long.encode() for n in cut)
    matcher = Matcher({7: cut})
    assert matcher.found(b"...." + long.encode()[200:300] + b"....") in (set(), {7})
    assert matcher.found(long.encode()[-40:]) == {7}  # the end fragment
    assert Matcher({}).found(b"anything") == set()
