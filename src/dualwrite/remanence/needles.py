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

A typed field's sampled plaintext is its canonical text (:mod:`dualwrite.crypto.values`). Only
text types (``text``, ``varchar``, ``char``) are stored as that text; a ``jsonb`` value keeps
its keys and strings as UTF-8 inside a binary container, so those are searched; dates,
numbers, booleans and timestamps are stored in binary form and are not searched (the report
counts them):

>>> from dualwrite.crypto.values import value_type
>>> texts_of(value_type("character varying(320)"), "ada@example.org")
['ada@example.org']
>>> texts_of(value_type("jsonb"), '{"allergy": "penicillin", "n": 2}')
['allergy', 'penicillin', 'n']
>>> texts_of(value_type("date"), "1950-01-01") is None
True
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ahocorasick_rs

from dualwrite.crypto.values import ValueType

__all__ = ["FRAGMENT", "MIN_NEEDLE", "Matcher", "needles_for", "texts_of"]

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


def texts_of(kind: ValueType, canonical: str) -> list[str] | None:
    """The texts a value of type ``kind`` is stored as (``None``: stored in binary form)."""
    if kind.name == "text":
        return [canonical]
    if kind.name == "jsonb":
        return list(_json_strings(json.loads(canonical)))
    return None


def _json_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_strings(item)


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
