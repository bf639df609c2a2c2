"""Versioned data keys, the keyring that holds them, and where they come from (pure).

A :class:`DataKey` is one AES-256 key with a version label (``v1``, ``v2``, ...) and dates; a
:class:`Keyring` holds every version this process may decrypt with and names exactly one
*current* version, the one new values are encrypted with. Keys come from a :class:`KeyProvider`:
:class:`EnvKeyProvider` reads ``ENCRYPTION_KEY`` / ``ENCRYPTION_KEYS`` from the settings,
:class:`FileKeyProvider` an ``ENCRYPTION_KEYS_FILE`` JSON document; a secrets manager plugs in
as any object with a ``load() -> Keyring`` method (``load_keyring(settings, provider=...)``).

>>> import base64
>>> k1, k2 = base64.b64decode(generate_key()), base64.b64decode(generate_key())
>>> ring = Keyring([DataKey("v1", k1), DataKey("v2", k2)])
>>> ring.current.version, ring.versions
('v2', ('v1', 'v2'))
>>> ring.get("v7")
Traceback (most recent call last):
    ...
dualwrite.errors.MissingKeyError: key version v7 is not in the keyring (holds v1, v2)

Key material never shows in a ``repr``, a ``str`` or an error message: messages about malformed
keys name the variable and the problem only. The only I/O here is :class:`FileKeyProvider`
reading the one file it is given.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, runtime_checkable

from dualwrite.errors import KeyringError, MissingKeyError

if TYPE_CHECKING:
    from dualwrite.config import Settings

__all__ = [
    "DEFAULT_LIFETIME_DAYS",
    "KEY_BYTES",
    "DataKey",
    "EnvKeyProvider",
    "FileKeyProvider",
    "KeyProvider",
    "Keyring",
    "generate_key",
    "is_version_label",
    "load_blind_index_key",
    "load_keyring",
]

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


# --- parsing helpers: messages name the variable and the problem, never the value ------------


def _decode_b64(text: str, where: str, *, exact: int | None = KEY_BYTES) -> bytes:
    compact = "".join(text.split()).translate(str.maketrans("-_", "+/"))  # url-safe accepted
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where} is not valid base64 ({_MAKE_ONE})") from None
    if exact is not None and len(raw) != exact:
        raise KeyringError(
            f"{where} has the wrong length: must be {exact} bytes, got {len(raw)} ({_MAKE_ONE})"
        )
    if len(raw) < KEY_BYTES:
        raise KeyringError(f"{where} is too short: must be at least {KEY_BYTES} bytes")
    return raw


def _check_label(label: object, where: str) -> str:
    if not isinstance(label, str) or not is_version_label(label):
        raise KeyringError(f"{where} has a bad version label ({_LABEL_HELP})")
    return label


def _assemble(
    keys: list[DataKey], current: object, *, where: str, current_where: str, source: str
) -> Keyring:
    """Checks shared by the multi-key sources, with messages naming the variable."""
    if not keys:
        raise KeyringError(f"{where} lists no keys")
    labels: set[str] = set()
    materials: dict[bytes, str] = {}
    for key in keys:
        if key.version in labels:
            raise KeyringError(f"{where} lists version {key.version} twice")
        labels.add(key.version)
        other = materials.setdefault(key.reveal(), key.version)
        if other != key.version:
            raise KeyringError(f"{where}: versions {other} and {key.version} hold the same key")
    if current is not None:
        label = _check_label(current, current_where)
        if label not in labels:
            held = ", ".join(sorted(labels, key=lambda v: int(v[1:])))
            raise KeyringError(f"{current_where} {label} is not in {where} (holds {held})")
    return Keyring(keys, current if isinstance(current, str) else None, source=source)


def _secret(value: Any) -> str:
    """The text of a SecretStr / str setting; '' when unset."""
    if value is not None and hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    return "" if value is None else str(value).strip()


def _file_setting(value: Any) -> Path | None:
    return None if value is None or str(value).strip() in ("", ".") else Path(value)


def _parse_time(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).strip()) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise KeyringError(f"{where} is not an ISO 8601 date/time string")
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


# --- providers -------------------------------------------------------------------------------


@runtime_checkable
class KeyProvider(Protocol):
    """Anything that can produce a :class:`Keyring` (environment, file, a secrets manager...)."""

    def load(self) -> Keyring: ...


class EnvKeyProvider:
    """Keys from settings: ``ENCRYPTION_KEY`` (+ ``ENCRYPTION_KEY_VERSION``) or ``ENCRYPTION_KEYS``.

    ``ENCRYPTION_KEYS`` is ``v1=<b64>,v2=<b64>`` (commas and/or whitespace between entries);
    ``ENCRYPTION_CURRENT_KEY`` picks the current version (default: the highest). Environment
    keys carry no dates, so ``created_at`` is the load time and ``expires_at`` is
    ``KEY_LIFETIME_DAYS`` after it; use :class:`FileKeyProvider` to track real expiry.

    >>> from types import SimpleNamespace as NS
    >>> s = NS(encryption_key=None, encryption_keys=f"v1={generate_key()},v2={generate_key()}",
    ...        encryption_key_version="v1", encryption_current_key="v1", key_lifetime_days=90)
    >>> EnvKeyProvider(s).load()
    Keyring(versions=('v1', 'v2'), current='v1', source='ENCRYPTION_KEYS')
    """

    def __init__(self, settings: Settings, *, now: datetime | None = None) -> None:
        self._settings = settings
        self._now = now

    def load(self) -> Keyring:
        s = self._settings
        single, many = _secret(s.encryption_key), _secret(s.encryption_keys)
        if single and many:
            raise KeyringError("set ENCRYPTION_KEY or ENCRYPTION_KEYS, not both")
        if not (single or many):
            raise MissingKeyError(_NO_KEY)
        source = "ENCRYPTION_KEY" if single else "ENCRYPTION_KEYS"
        entries: list[tuple[str, str, str]] = []  # (label, base64, where)
        if single:
            version = (s.encryption_key_version or "v1").strip()
            entries.append((_check_label(version, "ENCRYPTION_KEY_VERSION"), single, source))
        for n, entry in enumerate((e for e in re.split(r"[,\s]+", many) if e), start=1):
            label, sep, b64 = entry.partition("=")
            where = f"ENCRYPTION_KEYS entry {n}"
            if not sep:
                raise KeyringError(f"{where} is not of the form v<N>=<base64 key>")
            entries.append((_check_label(label, where), b64, f"{where} ({label})"))
        now, lifetime = _utc(self._now, "now"), int(s.key_lifetime_days)
        keys = [
            DataKey(label, _decode_b64(b64, where), created_at=now, lifetime_days=lifetime)
            for label, b64, where in entries
        ]
        current = (s.encryption_current_key or "").strip() or None
        return _assemble(
            keys, current, where=source, current_where="ENCRYPTION_CURRENT_KEY", source=source
        )


class FileKeyProvider:
    """Keys with metadata from a JSON file (``ENCRYPTION_KEYS_FILE``)::

        {"current": "v2",
         "keys": [{"version": "v1", "key": "<b64>", "created_at": "2025-01-01T00:00:00Z",
                   "expires_at": "2025-04-01T00:00:00Z"},
                  {"version": "v2", "key": "<b64>", "created_at": "2025-03-20T00:00:00Z"}]}

    ``current`` defaults to the highest version, ``created_at`` to the load time, ``expires_at``
    to ``created_at`` + ``lifetime_days``. Dates without a zone are UTC.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        lifetime_days: int = DEFAULT_LIFETIME_DAYS,
        now: datetime | None = None,
    ) -> None:
        self.path = Path(path)
        self._lifetime = lifetime_days
        self._now = now

    def load(self) -> Keyring:
        where = f"ENCRYPTION_KEYS_FILE {self.path}"
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise KeyringError(
                f"{where}: cannot read ({exc.strerror or type(exc).__name__})"
            ) from None
        except UnicodeDecodeError:
            raise KeyringError(f"{where}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise KeyringError(f"{where}: not valid JSON (line {exc.lineno})") from None
        return self.parse(doc, where=where)

    def parse(self, doc: Any, *, where: str = "keys file") -> Keyring:
        """Build the keyring from an already-decoded JSON document (see the class docstring)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise KeyringError(f'{where}: expected an object with a "keys" list')
        now = _utc(self._now, "now")
        keys: list[DataKey] = []
        for n, item in enumerate(doc["keys"]):
            at = f"{where}: keys[{n}]"
            if not isinstance(item, dict):
                raise KeyringError(f"{at} is not an object")
            label = _check_label(item.get("version"), f"{at}.version")
            if not isinstance(item.get("key"), str):
                raise KeyringError(f'{at} ({label}) needs a "key" string (base64)')
            material = _decode_b64(item["key"], f"{at}.key ({label})")
            created = _parse_time(item.get("created_at"), f"{at}.created_at") or now
            expires = _parse_time(item.get("expires_at"), f"{at}.expires_at")
            if expires is not None and expires <= created:
                raise KeyringError(f"{at} ({label}): expires_at must be after created_at")
            keys.append(
                DataKey(
                    label,
                    material,
                    created_at=created,
                    expires_at=expires,
                    lifetime_days=self._lifetime,
                )
            )
        return _assemble(
            keys,
            doc.get("current"),
            where=where,
            current_where=f'{where}: "current"',
            source=f"ENCRYPTION_KEYS_FILE ({self.path})",
        )


# --- entry points ----------------------------------------------------------------------------


def load_keyring(
    settings: Settings, *, provider: KeyProvider | None = None, now: datetime | None = None
) -> Keyring:
    """The keyring configured in ``settings`` (or produced by ``provider`` when given).

    Exactly one source may be set: ``ENCRYPTION_KEY``, ``ENCRYPTION_KEYS`` or
    ``ENCRYPTION_KEYS_FILE``. None set raises :class:`MissingKeyError` (there is no built-in
    default key); more than one, or a malformed key, raises :class:`KeyringError`.
    """
    if provider is not None:
        return provider.load()
    path = _file_setting(settings.encryption_keys_file)
    sources = [
        name
        for name, present in (
            ("ENCRYPTION_KEY", bool(_secret(settings.encryption_key))),
            ("ENCRYPTION_KEYS", bool(_secret(settings.encryption_keys))),
            ("ENCRYPTION_KEYS_FILE", path is not None),
        )
        if present
    ]
    if not sources:
        raise MissingKeyError(_NO_KEY)
    if len(sources) > 1:
        raise KeyringError(f"more than one key source is set ({', '.join(sources)}); set one")
    if path is not None:
        return FileKeyProvider(path, lifetime_days=settings.key_lifetime_days, now=now).load()
    return EnvKeyProvider(settings, now=now).load()


def generate_key() -> str:
    """A fresh random 32-byte key, base64-encoded (for ``ENCRYPTION_KEY`` or ``BLIND_INDEX_KEY``).

    >>> len(base64.b64decode(generate_key()))
    32
    """
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def load_blind_index_key(settings: Settings) -> bytes:
    """The ``BLIND_INDEX_KEY`` bytes (base64, at least 32 bytes), separate from the data keys."""
    text = _secret(settings.blind_index_key)
    if not text:
        raise MissingKeyError(
            "no blind index key configured: set BLIND_INDEX_KEY "
            "(make one with `dualwrite keys generate --blind-index`)"
        )
    return _decode_b64(text, "BLIND_INDEX_KEY", exact=None)
