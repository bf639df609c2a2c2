"""Versioned data keys and the keyring that holds them (pure).

A :class:`DataKey` is one AES-256 key with a version label (``v1``, ``v2``, ...) and dates; a
:class:`Keyring` holds every version this process may decrypt with and names exactly one
*current* version, the one new values are encrypted with. Keys come from a key provider
(environment, ``ENCRYPTION_KEYS_FILE``, a secrets manager) in :mod:`dualwrite.crypto.providers`,
which builds keyrings from this module's classes.

>>> import os
>>> k1, k2 = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
>>> ring = Keyring([DataKey("v1", k1), DataKey("v2", k2)])
>>> ring.current.version, ring.versions
('v2', ('v1', 'v2'))
>>> ring.get("v7")
Traceback (most recent call last):
    ...
dualwrite.errors.MissingKeyError: key version v7 is not in the keyring (holds v1, v2)

Key material never shows in a ``repr``, a ``str`` or an error message. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from dualwrite.errors import KeyringError, MissingKeyError

__all__ = ["DEFAULT_LIFETIME_DAYS", "KEY_BYTES", "DataKey", "Keyring", "is_version_label"]

KEY_BYTES = 32
DEFAULT_LIFETIME_DAYS = 90
_VERSION = re.compile(r"v[1-9][0-9]{0,5}")
_LABEL_HELP = "expected v1, v2, ...: 'v' and a number without leading zero, at most 6 digits"
_MAKE_ONE = "make one with `dualwrite keys generate`"
_NO_KEY = f"no encryption key configured: set ENCRYPTION_KEY ({_MAKE_ONE})"


def is_version_label(label: object) -> bool:
    """Whether ``label`` is a valid key version label.

    >>> [is_version_label(s) for s in ("v1", "v42", "v0", "v01", "V1", "1")]
    [True, True, False, False, False, False]
    """
    return isinstance(label, str) and _VERSION.fullmatch(label) is not None


def _shown(label: object) -> str:
    """A label fit for a message: valid labels as they are, anything else never echoed."""
    return label if isinstance(label, str) and is_version_label(label) else "(invalid label)"


def _utc(value: datetime | None, what: str) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if value.tzinfo is None or value.utcoffset() is None:
        raise KeyringError(f"{what} must be timezone-aware")
    return value.astimezone(UTC)


class DataKey:
    """One versioned AES-256 data key. Immutable; its 32 bytes never show in ``repr``/``str``.

    ``created_at`` defaults to now, ``expires_at`` to ``created_at`` + ``lifetime_days`` (90).

    >>> key = DataKey("v2", bytes(32), created_at=datetime(2025, 1, 1, tzinfo=UTC))
    >>> key
    DataKey(version='v2', expires_at='2025-04-01T00:00:00+00:00')
    >>> key.number, key.created_at.year
    (2, 2025)
    """

    __slots__ = ("_material", "created_at", "expires_at", "number", "version")

    version: str  # "v2"
    number: int  # 2
    created_at: datetime  # timezone-aware, UTC
    expires_at: datetime
    _material: bytes

    def __init__(
        self,
        version: str,
        material: bytes,
        *,
        created_at: datetime | None = None,
        expires_at: datetime | None = None,
        lifetime_days: int = DEFAULT_LIFETIME_DAYS,
    ) -> None:
        if not is_version_label(version):
            raise KeyringError(f"bad key version label ({_LABEL_HELP})")
        if not isinstance(material, bytes | bytearray) or len(material) != KEY_BYTES:
            size = len(material) if isinstance(material, bytes | bytearray) else "non-bytes"
            raise KeyringError(f"key {version} must be {KEY_BYTES} bytes (got {size})")
        created = _utc(created_at, "created_at")
        if expires_at is None and lifetime_days < 1:
            raise KeyringError("key lifetime must be at least 1 day")
        expires = (
            created + timedelta(days=lifetime_days)
            if expires_at is None
            else _utc(expires_at, "expires_at")
        )
        if expires <= created:
            raise KeyringError(f"key {version}: expires_at must be after created_at")
        for name, value in (
            ("version", version),
            ("number", int(version[1:])),
            ("created_at", created),
            ("expires_at", expires),
            ("_material", bytes(material)),
        ):
            object.__setattr__(self, name, value)

    def reveal(self) -> bytes:
        """The raw 32 key bytes. Only the cipher should call this; never log the result."""
        return self._material

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("DataKey is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("DataKey cannot be pickled (it would copy key material)")

    def __repr__(self) -> str:
        return f"DataKey(version={self.version!r}, expires_at={self.expires_at.isoformat()!r})"

    __str__ = __repr__


class Keyring:
    """Every key version this process holds, with exactly one current (encrypting) version.

    ``current`` defaults to the highest version; ``source`` says where the keys came from.

    >>> ring = Keyring([DataKey("v1", bytes(32)), DataKey("v3", bytes(range(32)))], current="v1")
    >>> ring
    Keyring(versions=('v1', 'v3'), current='v1', source='memory')
    >>> "v3" in ring, len(ring), [k.version for k in ring]
    (True, 2, ['v1', 'v3'])
    """

    __slots__ = ("_current", "_keys", "source")

    def __init__(
        self, keys: Iterable[DataKey], current: str | None = None, *, source: str = "memory"
    ) -> None:
        by_version: dict[str, DataKey] = {}
        for key in keys:
            if not isinstance(key, DataKey):
                raise KeyringError("a keyring holds DataKey objects only")
            if key.version in by_version:
                raise KeyringError(f"duplicate key version {key.version}")
            by_version[key.version] = key
        if not by_version:
            raise MissingKeyError(_NO_KEY)
        self._keys = dict(sorted(by_version.items(), key=lambda item: item[1].number))
        if current is None:
            current = next(reversed(self._keys))
        elif current not in by_version:
            raise KeyringError(
                f"current key version {_shown(current)} is not in the keyring "
                f"(holds {', '.join(self._keys)})"
            )
        self._current = by_version[current]
        self.source = source

    def get(self, version: str) -> DataKey:
        """The key of ``version``; :class:`MissingKeyError` if this keyring does not hold it."""
        try:
            return self._keys[version]
        except (KeyError, TypeError):
            raise MissingKeyError(
                f"key version {_shown(version)} is not in the keyring "
                f"(holds {', '.join(self._keys)})"
            ) from None

    @property
    def current(self) -> DataKey:
        """The key new values are encrypted with."""
        return self._current

    @property
    def versions(self) -> tuple[str, ...]:
        """Every held version label, sorted by number (``v2`` before ``v10``)."""
        return tuple(self._keys)

    def expiring(self, within: timedelta, now: datetime | None = None) -> list[DataKey]:
        """Keys that expire within ``within`` of ``now`` (already expired ones included).

        >>> t0 = datetime(2025, 1, 1, tzinfo=UTC)
        >>> ring = Keyring([DataKey("v1", bytes(32), created_at=t0, lifetime_days=10)])
        >>> ring.expiring(timedelta(days=3), now=t0 + timedelta(days=8))
        [DataKey(version='v1', expires_at='2025-01-11T00:00:00+00:00')]
        >>> ring.expiring(timedelta(days=3), now=t0)
        []
        """
        limit = _utc(now, "now") + within
        return [k for k in self._keys.values() if k.expires_at <= limit]

    def with_key(self, key: DataKey, *, make_current: bool = False) -> Keyring:
        """A new keyring with ``key`` added (``make_current=True`` to rotate to it)."""
        current = key.version if make_current else self._current.version
        return Keyring([*self._keys.values(), key], current, source=self.source)

    def __contains__(self, version: object) -> bool:
        return version in self._keys

    def __iter__(self) -> Iterator[DataKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return (
            f"Keyring(versions={self.versions!r}, current={self._current.version!r}, "
            f"source={self.source!r})"
        )

    __str__ = __repr__
