"""Blind indexes: keyed, deterministic fingerprints that make encrypted fields searchable (pure).

``index = HMAC-SHA256(BLIND_INDEX_KEY, b"dualwrite.bidx.v1|" + kind + b"|" + normalized)[:length]``

Equal values (after normalisation) give equal indexes, so ``WHERE email_bidx = :bidx`` finds a
row without decrypting anything, while the index reveals nothing without the key. The key is a
family of its own (``BLIND_INDEX_KEY``), so rotating data keys needs no re-index.

>>> bidx = BlindIndex(bytes(range(32)))
>>> bidx.compute(" Ada@Example.COM ", "email") == bidx.compute("ada@example.com", "email")
True
>>> bidx.compute("+1 (555) 010-9999", "phone") == bidx.compute("1.555.010.9999", "phone")
True
>>> len(bidx.compute("ada", "text")), bidx.compute("   ", "text")
(16, None)

Normalisation is part of the format: changing it means recomputing every index.

- every kind first applies Unicode NFKC (full-width letters and digits become ASCII, composed
  and decomposed accents compare equal);
- ``email``: strip surrounding whitespace, casefold;
- ``phone``: keep the ASCII digits only — ``+``, spaces, dots, dashes and brackets are dropped,
  so ``+1 555 0100`` and ``1-555-0100`` match, but ``555 0100`` (no country code) does not;
- ``text``: strip, casefold, collapse inner whitespace runs to one space;
- ``exact``: the value as it is (the canonical text of a typed value: a date of birth, a
  number), no normalisation at all.

A value that normalises to the empty string has no index (``None``), like ``None`` itself
(``exact`` indexes the empty string too).

``unique`` fields keep the original constraint's equality with :meth:`BlindIndex.unique`, a
full 32-byte HMAC of the exact value under its own domain
(``HMAC-SHA256(BLIND_INDEX_KEY, b"dualwrite.uidx.v1|" + value)``), stored in ``<name>_uidx``
with a UNIQUE index.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import TYPE_CHECKING, Literal

from dualwrite.crypto.providers import load_blind_index_key
from dualwrite.errors import KeyringError

if TYPE_CHECKING:
    from dualwrite.config import Settings

__all__ = ["BLIND_INDEX_DOMAIN", "UNIQUE_INDEX_DOMAIN", "BlindIndex", "Kind"]

Kind = Literal["email", "phone", "text", "exact"]
BLIND_INDEX_DOMAIN = b"dualwrite.bidx.v1|"
UNIQUE_INDEX_DOMAIN = b"dualwrite.uidx.v1|"
MIN_KEY_BYTES = 32
_KIND_TAGS: dict[str, bytes] = {
    k: BLIND_INDEX_DOMAIN + k.encode("ascii") + b"|" for k in ("email", "phone", "text", "exact")
}
_NOT_ASCII_DIGIT = re.compile("[^0-9]")  # a literal range: ASCII digits only
# ASCII input (the common case): the same deletion as _NOT_ASCII_DIGIT by str.translate
_ASCII_NON_DIGITS = str.maketrans("", "", "".join(chr(c) for c in range(128) if not 48 <= c <= 57))
_BLOCK = 64  # SHA-256's block size: HMAC pads (or first hashes) the key to it


def _hmac_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's inner and outer hash states after the padded key (RFC 2104), so that one
    index costs two hash copies instead of a fresh HMAC key schedule.

    >>> import hmac
    >>> inner, outer = _hmac_states(bytes(range(40)))
    >>> i = inner.copy(); i.update(b"m"); o = outer.copy(); o.update(i.digest())
    >>> o.digest() == hmac.digest(bytes(range(40)), b"m", "sha256")
    True
    """
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


class BlindIndex:
    """Computes blind indexes with one key; ``length`` (8-32, default 16) bytes per index.

    >>> BlindIndex(bytes(32), length=8)
    BlindIndex(length=8)
    >>> BlindIndex.normalize("  Mary   ANN\\tSmith ", "text")
    'mary ann smith'
    >>> BlindIndex.normalize("+44 (0)20 7946-0958", "phone")
    '4402079460958'
    """

    __slots__ = ("_inner", "_outer", "length")

    def __init__(self, key: bytes, length: int = 16) -> None:
        if not isinstance(key, bytes | bytearray):
            raise TypeError("blind index key must be bytes")
        if len(key) < MIN_KEY_BYTES:
            raise KeyringError(
                f"blind index key must be at least {MIN_KEY_BYTES} bytes (got {len(key)} bytes)"
            )
        if isinstance(length, bool) or not isinstance(length, int) or not 8 <= length <= 32:
            raise ValueError("blind index length must be an int from 8 to 32")
        self._inner, self._outer = _hmac_states(bytes(key))
        self.length = length

    @classmethod
    def from_settings(cls, settings: Settings) -> BlindIndex:
        """From ``BLIND_INDEX_KEY`` and ``BLIND_INDEX_BYTES``."""
        return cls(load_blind_index_key(settings), settings.blind_index_bytes)

    @staticmethod
    def normalize(value: str, kind: Kind) -> str:
        """The normal form that is indexed (see the module docstring for the rules).

        >>> BlindIndex.normalize("  Ada@EXAMPLE.com", "email")
        'ada@example.com'
        >>> BlindIndex.normalize("\uff10\uff13\uff10-\uff11\uff12\uff13", "phone")  # full-width
        '030123'
        """
        if not isinstance(value, str):
            raise TypeError(f"blind index value must be str, got {type(value).__name__}")
        if kind == "exact":
            return value
        text = value if value.isascii() else unicodedata.normalize("NFKC", value)  # ASCII: stable
        if kind == "email":
            return text.strip().casefold()
        if kind == "phone":
            if text.isascii():
                return text.translate(_ASCII_NON_DIGITS)
            return _NOT_ASCII_DIGIT.sub("", text)
        if kind == "text":
            return " ".join(text.casefold().split())
        raise ValueError("blind index kind must be 'email', 'phone', 'text' or 'exact'")

    def compute(self, value: str | None, kind: Kind) -> bytes | None:
        """The index of ``value``; ``None`` for ``None`` or a value that normalises to empty.

        >>> b = BlindIndex(bytes(32), length=8)
        >>> b.compute("A@x.io ", "email").hex(), b.compute(None, "email")
        ('9bbb010dbf3550e0', None)
        """
        return None if value is None else self._index(value, kind, None)

    def stored(self, value: str | None, kind: Kind) -> bytes | None:
        """What a writer stores: like :meth:`compute`, but a present value that normalises to
        nothing (a phone written ``"n/a"``) stores the empty marker ``b""`` rather than NULL,
        so the row still counts as covered. Searches use :meth:`compute`, which never yields
        ``b""``, so the marker matches no search.

        >>> b = BlindIndex(bytes(32), length=8)
        >>> b.stored("n/a", "phone"), b.stored(None, "phone"), b.compute("n/a", "phone")
        (b'', None, None)
        """
        return None if value is None else self._index(value, kind, b"")

    def _index(self, value: str, kind: Kind, empty: bytes | None) -> bytes | None:
        """The truncated HMAC of ``value``'s normal form, or ``empty`` when it normalises to
        nothing (:meth:`compute` and :meth:`stored` in one call each: the write path computes
        this for every searchable field)."""
        normal = self.normalize(value, kind)
        if not normal and kind != "exact":
            return empty
        try:
            message = _KIND_TAGS[kind] + normal.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("blind index value is not valid Unicode (lone surrogate)") from None
        return self._mac(message)[: self.length]

    def unique(self, value: str | None) -> bytes | None:
        """The ``<name>_uidx`` of a ``unique`` field's exact value (its canonical equality text).

        >>> b = BlindIndex(bytes(32))
        >>> len(b.unique("a@x.io")), b.unique("a@x.io") == b.unique("A@x.io"), b.unique(None)
        (32, False, None)
        """
        if value is None:
            return None
        try:
            message = UNIQUE_INDEX_DOMAIN + value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("unique index value is not valid Unicode (lone surrogate)") from None
        return self._mac(message)

    def _mac(self, message: bytes) -> bytes:
        """``HMAC-SHA256(key, message)`` from the precomputed key states."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("BlindIndex cannot be pickled (it would copy key material)")

    def __repr__(self) -> str:
        return f"BlindIndex(length={self.length})"

    __str__ = __repr__
