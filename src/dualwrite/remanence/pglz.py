"""PostgreSQL's pglz decompression, in Python (pure).

The format (``src/common/pg_lzcompress.c``): a stream of items, each control byte announcing
the next 8 items, lowest bit first. A 0 bit is one literal byte. A 1 bit is a back-reference of
two bytes -- length ``(b0 & 0x0f) + 3``, offset ``((b0 & 0xf0) << 4) | b1`` -- plus an extra
length byte when the 4-bit length is 15 (18 in all), copying ``length`` bytes from ``offset``
back in the output (overlapping copies repeat the pattern). Decompression stops at the raw size
the datum header announces.

>>> decompress(bytes([0b0000_0000]) + b"abcdefgh", 8)
b'abcdefgh'
>>> # "ab", then a reference 2 back, 9 long: the pattern repeats
>>> stream = bytes([0b0000_0100, ord("a"), ord("b"), 0x06, 0x02])
>>> decompress(stream, 11)
b'abababababa'
>>> try:
...     decompress(stream, 12)
... except PglzError as exc:
...     print(exc)
pglz: output is 11 bytes, the header announced 12
>>> decompress(stream, 12, complete=False)
b'abababababa'
"""

from __future__ import annotations

from dualwrite.errors import PglzError

__all__ = ["PglzError", "decompress"]


def decompress(source: bytes, rawsize: int, *, complete: bool = True) -> bytes:
    """Decompress ``source`` into ``rawsize`` bytes.

    ``complete=False`` returns what a truncated or partly overwritten stream still yields (the
    scan searches that too); ``complete=True`` also requires the stream to end exactly there.
    """
    out = bytearray()
    sp, end = 0, len(source)
    while sp < end and len(out) < rawsize:
        ctrl = source[sp]
        sp += 1
        for _ in range(8):
            if sp >= end or len(out) >= rawsize:
                break
            if ctrl & 1:
                if sp + 1 >= end:
                    if complete:
                        raise PglzError("pglz: truncated back-reference")
                    return bytes(out)
                b0, b1 = source[sp], source[sp + 1]
                sp += 2
                length = (b0 & 0x0F) + 3
                offset = ((b0 & 0xF0) << 4) | b1
                if length == 18:
                    if sp >= end:
                        if complete:
                            raise PglzError("pglz: truncated length byte")
                        return bytes(out)
                    length += source[sp]
                    sp += 1
                if offset == 0 or offset > len(out):
                    if complete:
                        raise PglzError("pglz: back-reference outside the output")
                    return bytes(out)
                length = min(length, rawsize - len(out))
                start = len(out) - offset
                if offset >= length:
                    out += out[start : start + length]
                else:
                    pattern = out[start:]
                    out += (pattern * (length // offset + 1))[:length]
            else:
                out.append(source[sp])
                sp += 1
            ctrl >>= 1
    if complete and (len(out) != rawsize or sp != end):
        raise PglzError(f"pglz: output is {len(out)} bytes, the header announced {rawsize}")
    return bytes(out)
