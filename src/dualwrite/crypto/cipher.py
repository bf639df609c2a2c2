"""The field ciphertext format, in one module (DESIGN.md section 3; pure, no I/O but the RNG).

``ciphertext = b"v" + N + b":" + nonce(12) + AES-256-GCM ciphertext + tag(16)``

with associated data binding the value to its place::

    aad = b"dualwrite.v1" + part(version_label) + part(table) + part(column) + part(row_key)
    part(s) = len(s.encode()).to_bytes(2, "big") + s.encode()

>>> from dualwrite.crypto.keyring import DataKey, Keyring
>>> fc = FieldCipher(Keyring([DataKey("v1", bytes(32))]))
>>> ct = fc.encrypt("Ada", table="clients", column="first_name", row_key="42")
>>> ct[:3], len(ct) == 3 + 12 + 3 + 16
(b'v1:', True)
>>> fc.decrypt(ct, table="clients", column="first_name", row_key="42")
'Ada'
>>> fc.decrypt(ct, table="clients", column="last_name", row_key="42")
Traceback (most recent call last):
    ...
dualwrite.errors.DecryptionError: cannot decrypt clients.last_name (key version v1): \
authentication failed (wrong key, or the value was altered or moved to another row/column)

Speed: :meth:`FieldCipher.encrypt` / :meth:`FieldCipher.decrypt` run a short fast path (one
cached ``AESGCM`` per version, cached associated-data prefixes per version/table/column and
row-key length, prefix parsed from the first three bytes) and hand anything unusual (unknown
table/column, multi-digit versions, odd types, any failure) to a slow path that checks every
step and raises the precise error. Both paths produce and accept the same bytes. A bulk
read's column openers (:mod:`dualwrite.crypto.columns`, natively ``_gcm.c``) read this same
format from :meth:`FieldCipher.openers`' prefixes; their tests hold them to :meth:`decrypt`.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dualwrite.crypto.keyring import Keyring, is_version_label
from dualwrite.errors import DecryptionError

__all__ = [
    "NONCE_BYTES",
    "TAG_BYTES",
    "FieldCipher",
    "associated_data",
    "key_version_of",
    "row_key_of",
]

AAD_MAGIC = b"dualwrite.v1"
NONCE_BYTES = 12
TAG_BYTES = 16
_MAX_PART = 0xFFFF
_FAST_LENGTHS = 128  # row keys up to this many bytes use precomputed aad prefixes
_MAX_CACHED_COLUMNS = 4096
_PREFIX = re.compile(rb"v([1-9][0-9]{0,5}):")
_AUTH_FAILED = (
    "authentication failed (wrong key, or the value was altered or moved to another row/column)"
)
_urandom = os.urandom
# Prebuilt slices of a single-digit-version ciphertext (b"vN:" + nonce + body): indexing with a
# ready slice object is measurably cheaper than ``ct[3:15]``, which builds one per call.
_HEAD, _NONCE, _BODY = slice(0, 3), slice(3, 15), slice(15, None)

Ciphertext = bytes | bytearray | memoryview
_Seal = Callable[[Any, Any, bytes], bytes]


def _part(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, got {type(text).__name__}")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None
    if len(raw) > _MAX_PART:
        raise ValueError(f"{what} is longer than {_MAX_PART} bytes")
    return len(raw).to_bytes(2, "big") + raw


def associated_data(version: str, table: str, column: str, row_key: str) -> bytes:
    """The associated data of one field value (DESIGN.md section 3).

    >>> associated_data("v2", "clients", "email", "7")
    b'dualwrite.v1\\x00\\x02v2\\x00\\x07clients\\x00\\x05email\\x00\\x017'
    """
    if not is_version_label(version):
        raise ValueError("version must be a key version label like 'v1'")
    return (
        AAD_MAGIC
        + _part(version, "version")
        + _part(table, "table")
        + _part(column, "column")
        + _part(row_key_of(row_key), "row_key")
    )


def row_key_of(pk: object) -> str:
    """The ``row_key`` text of a primary key: canonical lowercase UUID, decimal int, or the str.

    >>> row_key_of(uuid.UUID("6FA459EA-EE8A-3CA4-894E-DB77E160355E"))
    '6fa459ea-ee8a-3ca4-894e-db77e160355e'
    >>> row_key_of(12), row_key_of("A-7")
    ('12', 'A-7')
    """
    if isinstance(pk, uuid.UUID):
        return str(pk)
    if isinstance(pk, int) and not isinstance(pk, bool):
        return str(pk)
    if isinstance(pk, str):
        if not pk:
            raise ValueError("row_key must not be empty")
        _part(pk, "row_key")
        return pk
    raise TypeError(f"row_key must be a str, int or UUID primary key, got {type(pk).__name__}")


class _Slot:
    """One key version bound to one table/column: cipher object and aad prefixes."""

    __slots__ = ("aead", "head", "label", "prefix", "pres")

    def __init__(self, label: str, aead: AESGCM, table_part: bytes, column_part: bytes) -> None:
        self.label = label
        self.aead = aead
        self.head = label.encode("ascii") + b":"
        self.prefix = AAD_MAGIC + _part(label, "version") + table_part + column_part
        # pres[n] = aad up to (and including) the length of an n-byte row key; pres[0] is None
        # so an empty row key falls out of the fast path and is refused by the slow path.
        pres: list[Any] = [self.prefix + n.to_bytes(2, "big") for n in range(_FAST_LENGTHS)]
        pres[0] = None
        self.pres: tuple[Any, ...] = tuple(pres)

    def aad(self, row_key: bytes) -> bytes:
        return self.prefix + len(row_key).to_bytes(2, "big") + row_key


class FieldCipher:
    """Encrypts and decrypts single text fields with a :class:`Keyring` (format in module doc).

    New values use the keyring's current version; every version it holds can decrypt. To
    rotate, build a new ``FieldCipher`` with the new keyring. Thread-safe (caches only grow).
    """

    __slots__ = ("_aeads", "_dec", "_enc", "_keyring", "_slots")

    def __init__(self, keyring: Keyring) -> None:
        if not isinstance(keyring, Keyring):
            raise TypeError("FieldCipher needs a Keyring")
        self._keyring = keyring
        self._aeads = {k.version: AESGCM(k.reveal()) for k in keyring}
        # table -> column -> fast-path tuples; (table, column) -> label -> _Slot for the slow path
        self._enc: dict[str, dict[str, tuple[bytes, _Seal, tuple[Any, ...]]]] = {}
        self._dec: dict[str, dict[str, dict[Any, tuple[_Seal, tuple[Any, ...]]]]] = {}
        self._slots: dict[tuple[str, str], dict[str, _Slot]] = {}

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    @property
    def current_version(self) -> str:
        """The version label new ciphertexts are written with (e.g. ``"v2"``)."""
        return self._keyring.current.version

    # --- fast paths ------------------------------------------------------------------------

    def encrypt(self, value: str | None, *, table: str, column: str, row_key: str) -> bytes | None:
        """Encrypt ``value`` for ``table.column`` of row ``row_key``; ``None`` stays ``None``.

        ``row_key`` is ``row_key_of(primary_key)``; an ``int`` or ``UUID`` is converted.
        """
        if value is None:
            return None
        try:
            head, seal, pres = self._enc[table][column]
            rk = row_key.encode()
            nonce = _urandom(12)
            return head + nonce + seal(nonce, value.encode(), pres[len(rk)] + rk)
        except (LookupError, TypeError, AttributeError, ValueError):
            return self._encrypt_slow(value, table, column, row_key)

    def decrypt(
        self, ciphertext: Ciphertext | None, *, table: str, column: str, row_key: str
    ) -> str | None:
        """Decrypt a value written by :meth:`encrypt`; ``None`` stays ``None``.

        Every failure raises :class:`~dualwrite.errors.DecryptionError`.
        """
        if ciphertext is None:
            return None
        try:
            open_, pres = self._dec[table][column][ciphertext[_HEAD]]
            rk = row_key.encode()
            return open_(ciphertext[_NONCE], ciphertext[_BODY], pres[len(rk)] + rk).decode()
        except (LookupError, TypeError, AttributeError, ValueError, InvalidTag):
            return self._decrypt_slow(ciphertext, table, column, row_key)

    def encrypt_many(
        self, items: Iterable[tuple[str | None, str]], *, table: str, column: str
    ) -> list[bytes | None]:
        """:meth:`encrypt` each ``(value, row_key)`` of one column, in order.

        Faster than one :meth:`encrypt` per value: the nonces come from ONE ``os.urandom``
        call per batch (a system call per value costs as much as the AES itself); every nonce
        is still 12 fresh random bytes.
        """
        if table not in self._enc or column not in self._enc[table]:
            self._slots_for(table, column)
        head, seal, pres = self._enc[table][column]
        pairs = items if isinstance(items, list | tuple) else list(items)
        nonces = _urandom(NONCE_BYTES * len(pairs))
        out: list[bytes | None] = []
        append = out.append
        at = 0
        for value, row_key in pairs:
            if value is None:
                append(None)
                continue
            try:
                rk = row_key.encode()
                nonce = nonces[at : at + 12]
                at += 12
                append(head + nonce + seal(nonce, value.encode(), pres[len(rk)] + rk))
            except (LookupError, TypeError, AttributeError, ValueError):
                append(self.encrypt(value, table=table, column=column, row_key=row_key))
        return out

    def decrypt_many(
        self, items: Iterable[tuple[Ciphertext | None, str]], *, table: str, column: str
    ) -> list[str | None]:
        """:meth:`decrypt` each ``(ciphertext, row_key)`` of one column, in order."""
        if table not in self._dec or column not in self._dec[table]:
            self._slots_for(table, column)
        versions = self._dec[table][column]
        out: list[str | None] = []
        append = out.append
        for ct, row_key in items:
            if ct is None:
                append(None)
                continue
            try:
                open_, pres = versions[ct[_HEAD]]
                rk = row_key.encode()
                append(open_(ct[_NONCE], ct[_BODY], pres[len(rk)] + rk).decode())
            except (LookupError, TypeError, AttributeError, ValueError, InvalidTag):
                append(self.decrypt(ct, table=table, column=column, row_key=row_key))
        return out

    def sealer(self, table: str, column: str) -> tuple[bytes, _Seal, tuple[Any, ...]]:
        """Low level, for callers that inline :meth:`encrypt` over many values (the field
        codec): ``(head, seal, pres)`` of the current version for ``table.column``, where a
        ciphertext is ``head + nonce + seal(nonce, data, pres[len(rk)] + rk)`` for a row key
        ``rk`` of 1..127 UTF-8 bytes and a fresh 12-byte ``nonce``. Anything else goes
        through :meth:`encrypt`.
        """
        if table not in self._enc or column not in self._enc[table]:
            self._slots_for(table, column)
        return self._enc[table][column]

    def openers(self, table: str, column: str) -> dict[Any, tuple[_Seal, tuple[Any, ...]]]:
        """Low level, the reverse of :meth:`sealer`: ``head -> (open, pres)`` per single-digit
        key version, where ``open(ct[3:15], ct[15:], pres[len(rk)] + rk)`` is the plaintext
        bytes; any miss or failure must be handed to :meth:`decrypt` for its precise error.
        """
        if table not in self._dec or column not in self._dec[table]:
            self._slots_for(table, column)
        return self._dec[table][column]

    # --- exact, checked paths ----------------------------------------------------------------

    def seal(self, key_version: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Low level: ``b"vN:" + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)``.

        Never call with a chosen nonce outside tests; :meth:`encrypt` draws a fresh one.
        """
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        aead = self._aead(key_version)
        return key_version.encode("ascii") + b":" + nonce + aead.encrypt(nonce, plaintext, aad)

    def key_version(self, ciphertext: Ciphertext, *, table: str = "?", column: str = "?") -> str:
        """The version label in a ciphertext's prefix (see :func:`key_version_of`)."""
        return key_version_of(ciphertext, table=table, column=column)

    def _aead(self, version: str) -> AESGCM:
        try:
            return self._aeads[version]
        except KeyError:
            self._keyring.get(version)  # raises MissingKeyError naming the version
            raise

    def _slots_for(self, table: str, column: str) -> dict[str, _Slot]:
        try:
            return self._slots[table, column]
        except (KeyError, TypeError):
            pass
        table_part, column_part = _part(table, "table"), _part(column, "column")
        slots = {
            label: _Slot(label, aead, table_part, column_part)
            for label, aead in self._aeads.items()
        }
        if len(self._slots) >= _MAX_CACHED_COLUMNS:
            self._slots.clear()
            self._enc.clear()
            self._dec.clear()
        self._slots[table, column] = slots
        current = slots[self.current_version]
        self._enc.setdefault(table, {})[column] = (current.head, current.aead.encrypt, current.pres)
        self._dec.setdefault(table, {})[column] = {
            s.head: (s.aead.decrypt, s.pres) for s in slots.values() if len(s.head) == 3
        }
        return slots

    def _encrypt_slow(self, value: object, table: str, column: str, row_key: object) -> bytes:
        slot = self._slots_for(table, column)[self.current_version]
        if not isinstance(value, str):
            raise TypeError(f"encrypt takes str or None, got {type(value).__name__}")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"value for {table}.{column} is not valid Unicode") from None
        rk = _part(row_key_of(row_key), "row_key")[2:]
        nonce = _urandom(NONCE_BYTES)
        return slot.head + nonce + slot.aead.encrypt(nonce, data, slot.aad(rk))

    def _decrypt_slow(self, ciphertext: object, table: str, column: str, row_key: object) -> str:
        slots = self._slots_for(table, column)
        rk = _part(row_key_of(row_key), "row_key")[2:]
        data = _as_bytes(ciphertext, table, column)
        label, start = _parse_prefix(data, table, column)
        slot = slots.get(label)
        if slot is None:
            raise DecryptionError(table, column, label, "this key version is not in the keyring")
        if len(data) < start + NONCE_BYTES + TAG_BYTES:
            raise DecryptionError(table, column, label, "value is truncated")
        nonce, body = data[start : start + NONCE_BYTES], data[start + NONCE_BYTES :]
        try:
            plain = slot.aead.decrypt(nonce, body, slot.aad(rk))
        except InvalidTag:
            raise DecryptionError(table, column, label, _AUTH_FAILED) from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError(table, column, label, "plaintext is not valid UTF-8") from None

    def __repr__(self) -> str:
        return f"FieldCipher(versions={self._keyring.versions!r}, current={self.current_version!r})"

    __str__ = __repr__


def key_version_of(ciphertext: Ciphertext, *, table: str = "?", column: str = "?") -> str:
    """The version label in a ciphertext's prefix, whether or not a keyring holds it.

    >>> key_version_of(b"v12:" + bytes(28))
    'v12'
    >>> key_version_of(b"12:")
    Traceback (most recent call last):
        ...
    dualwrite.errors.DecryptionError: cannot decrypt ?.? (key version unknown): \
not a dualwrite ciphertext (no v<N>: version prefix)
    """
    return _parse_prefix(_as_bytes(ciphertext, table, column), table, column)[0]


def _as_bytes(ciphertext: object, table: str, column: str) -> bytes:
    if isinstance(ciphertext, bytes):
        return ciphertext
    if isinstance(ciphertext, bytearray | memoryview):
        return bytes(ciphertext)
    raise DecryptionError(table, column, None, f"expected bytes, got {type(ciphertext).__name__}")


def _parse_prefix(data: bytes, table: str, column: str) -> tuple[str, int]:
    """``(version_label, index of the nonce)`` from ``b"vN:..."``, or DecryptionError."""
    end = data.find(b":", 0, 9)
    match = _PREFIX.fullmatch(data, 0, end + 1) if end > 0 else None
    if match is None:
        raise DecryptionError(
            table, column, None, "not a dualwrite ciphertext (no v<N>: version prefix)"
        )
    return "v" + match.group(1).decode("ascii"), end + 1
