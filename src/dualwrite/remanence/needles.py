"""What the scan looks for: byte strings cut from sampled plaintext, and a multi-pattern matcher.

A value shorter than :data:`MIN_NEEDLE` bytes is not searched (a 4-letter first name occurs in
random bytes and in unrelated text; it would be a false alarm, not a finding): the report
counts those. A long value is searched by three fragments (start, middle, end) so that a value
split over TOAST chunks, or partly overwritten, is still found.

>>> n = needles_for("ada@example.org")
>>> n
[b'ada@example.org']
>>> needles_for("Ada")
[]
>>> [len(x) for x in needles_for("x" * 5000)]
[32, 32, 32]
>>> m = Matcher({1: needles_for("ada@example.org"), 2: needles_for("+1 555 0100")})
>>> sorted(m.found(b"..+1 555 0100..ada@example.org.."))
[1, 2]
>>> m.found(b"nothing here")
set()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ahocorasick_rs

__all__ = ["FRAGMENT", "MIN_NEEDLE", "Matcher", "needles_for"]

MIN_NEEDLE = 8
FRAGMENT = 32


def needles_for(value: str) -> list[bytes]:
    """The byte strings that reveal ``value`` (its UTF-8, as PostgreSQL stores text)."""
    raw = value.encode()
    if len(raw) < MIN_NEEDLE:
        return []
    if len(raw) <= 2 * FRAGMENT:
        return [raw]
    mid = (len(raw) - FRAGMENT) // 2
    return [raw[:FRAGMENT], raw[mid : mid + FRAGMENT], raw[-FRAGMENT:]]


class Matcher:
    """Finds which values (by key) have a needle in a buffer, all needles in one pass."""

    def __init__(self, needles: Mapping[int, Sequence[bytes]]) -> None:
        patterns: list[bytes] = []
        self._owner: list[int] = []
        for key, found in needles.items():
            for needle in found:
                patterns.append(needle)
                self._owner.append(key)
        self.patterns = len(patterns)
        self._ac = ahocorasick_rs.BytesAhoCorasick(patterns) if patterns else None

    def found(self, buffer: bytes) -> set[int]:
        if self._ac is None or not buffer:
            return set()
        hits = self._ac.find_matches_as_indexes(buffer, overlapping=True)
        return {self._owner[i] for i, _start, _end in hits}
