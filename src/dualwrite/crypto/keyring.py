"""Versioned data keys, the keyring that holds them, and where they come from (pure).

A :class:`DataKey` is one AES-256 key with a version label (``v1``, ``v2``, ...) and dates; a
:class:`Keyring` holds every version this process may decrypt with and names exactly one
*current* version, the one new values are encrypted with. Keys come from a :class:`KeyProvider`:
:class:`EnvKeyProvider` reads ``ENCRYPTION_KEY`` / ``ENCRYPTION_KEYS`` from :class:`Settings`,
:class:`FileKeyProvider` reads an ``ENCRYPTION_KEYS_FILE`` JSON document, and a secrets manager
can be added by writing any object with a ``load() -> Keyring`` method.

>>> import base64
>>> k1, k2 = base64.b64decode(generate_key()), base64.b64decode(generate_key())
>>> ring = Keyring([DataKey("v1", k1), DataKey("v2", k2)])
>>> ring.current.version, ring.versions
('v2', ('v1', 'v2'))
>>> ring.get("v7")
Traceback (most recent call last):
    ...
dualwrite.errors.MissingKeyError: key version v7 is not in the keyring (holds v1, v2)

Key material never shows in a ``repr``, a ``str`` or an error message; messages about malformed
keys name the variable and the problem only. This module does no I/O except
:class:`FileKeyProvider` reading the one file it is given.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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
_LABEL_HELP = "expected v1, v2, ... (v then a number without leading zero, at most 6 digits)"
_NO_KEY = (
    "no encryption key configured: set ENCRYPTION_KEY "
    "(make one with `dualwrite keys generate`)"
)


def is_version_label(label: object) -> bool:
    """Whether ``label`` is a valid key version label.

    >>> [is_version_label(s) for s in ("v1", "v42", "v0", "v01", "V1", "1")]
    [True, True, False, False, False, False]
    """
    return isinstance(label, str) and _VERSION.fullmatch(label) is not None


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise KeyringError(f"{what} must be timezone-aware")
    return value.astimezone(UTC)


class DataKey:
    """One versioned AES-256 data key. Immutable; its 32 bytes never show in ``repr``/``str``.

    ``expires_at`` defaults to ``created_at`` + ``lifetime_days`` (90), ``created_at`` to now.

    >>> from datetime import datetime, UTC
    >>> key = DataKey("v2", bytes(32), created_at=datetime(2025, 1, 1, tzinfo=UTC))
    >>> key
    DataKey(version='v2', created_at='2025-01-01T00:00:00+00:00', expires_at='2025-04-01T00:00:00+00:00')
    >>> key.number
    2
    """

    __slots__ = ("_material", "created_at", "expires_at", "number", "version")

    version: str
    number: int
    created_at: datetime
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
        if not isinstance(material, bytes | bytearray | memoryview):
            raise KeyringError(f"key {version} material must be bytes")
        material = bytes(material)
        if len(material) != KEY_BYTES:
            raise KeyringError(
                f"key {version} must be {KEY_BYTES} bytes (got {len(material)} bytes)"
            )
        created = _utc(created_at, "created_at") if created_at else datetime.now(UTC)
        if expires_at is None:
            if lifetime_days < 1:
                raise KeyringError("key lifetime must be at least 1 day")
            expires = created + timedelta(days=lifetime_days)
        else:
            expires = _utc(expires_at, "expires_at")
        if expires <= created:
            raise KeyringError(f"key {version} expires_at must be after created_at")
        setter = object.__setattr__
        setter(self, "version", version)
        setter(self, "number", int(version[1:]))
        setter(self, "created_at", created)
        setter(self, "expires_at", expires)
        setter(self, "_material", material)

    def reveal(self) -> bytes:
        """The raw 32 key bytes. Only the cipher should call this; never log the result."""
        return self._material

    def days_left(self, now: datetime | None = None) -> float:
        """Days until expiry (negative once expired)."""
        now = _utc(now, "now") if now else datetime.now(UTC)
        return (self.expires_at - now).total_seconds() / 86_400

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("DataKey is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("DataKey is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataKey):
            return NotImplemented
        return (
            self.version == other.version
            and self.created_at == other.created_at
            and self.expires_at == other.expires_at
            and hmac.compare_digest(self._material, other._material)
        )

    def __hash__(self) -> int:
        return hash((self.version, self.created_at))

    def __reduce__(self) -> Any:
        raise TypeError("DataKey cannot be pickled (it would copy key material)")

    def __repr__(self) -> str:
        return (
            f"DataKey(version={self.version!r}, created_at={self.created_at.isoformat()!r}, "
            f"expires_at={self.expires_at.isoformat()!r})"
        )

    __str__ = __repr__


class Keyring:
    """Every key version this process holds, with exactly one current (encrypting) version.

    ``current`` defaults to the highest version. ``source`` says where the keys came from
    (shown by ``dualwrite keys list``).

    >>> ring = Keyring([DataKey("v1", bytes(32)), DataKey("v3", bytes(range(32)))], current="v1")
    >>> ring
    Keyring(versions=('v1', 'v3'), current='v1', source='memory')
    >>> "v3" in ring, len(ring)
    (True, 2)
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
        ordered = sorted(by_version.values(), key=lambda k: k.number)
        if current is None:
            current = ordered[-1].version
        elif current not in by_version:
            shown = current if is_version_label(current) else "(invalid label)"
            raise KeyringError(
                f"current key version {shown} is not in the keyring "
                f"(holds {', '.join(k.version for k in ordered)})"
            )
        self._keys = {k.version: k for k in ordered}
        self._current = by_version[current]
        self.source = source

    def get(self, version: str) -> DataKey:
        """The key of ``version``; :class:`MissingKeyError` if this keyring does not hold it."""
        try:
            return self._keys[version]
        except (KeyError, TypeError):
            shown = version if is_version_label(version) else "(invalid label)"
            raise MissingKeyError(
                f"key version {shown} is not in the keyring (holds {', '.join(self._keys)})"
            ) from None

    @property
    def current(self) -> DataKey:
        """The key new values are encrypted with."""
        return self._current

    @property
    def versions(self) -> tuple[str, ...]:
        """Every held version label, sorted by number (``v2`` before ``v10``)."""
        return tuple(self._keys)

    @property
    def keys(self) -> tuple[DataKey, ...]:
        """Every held key, sorted by version number."""
        return tuple(self._keys.values())

    def expiring(self, within: timedelta, now: datetime | None = None) -> list[DataKey]:
        """Keys that expire within ``within`` of ``now`` (already expired ones included).

        >>> from datetime import datetime, timedelta, UTC
        >>> t0 = datetime(2025, 1, 1, tzinfo=UTC)
        >>> ring = Keyring([DataKey("v1", bytes(32), created_at=t0, lifetime_days=10)])
        >>> ring.expiring(timedelta(days=3), now=t0 + timedelta(days=8))
        [DataKey(version='v1', created_at='2025-01-01T00:00:00+00:00', expires_at='2025-01-11T00:00:00+00:00')]
        >>> ring.expiring(timedelta(days=3), now=t0)
        []
        """
        limit = (_utc(now, "now") if now else datetime.now(UTC)) + within
        return [k for k in self._keys.values() if k.expires_at <= limit]

    def with_key(self, key: DataKey, *, make_current: bool = False) -> Keyring:
        """A new keyring with ``key`` added (rotation: ``ring.with_key(new, make_current=True)``)."""
        current = key.version if make_current else self._current.version
        return Keyring([*self._keys.values(), key], current, source=self.source)

    def __contains__(self, version: object) -> bool:
        return version in self._keys

    def __iter__(self) -> Iterator[DataKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __reduce__(self) -> Any:
        raise TypeError("Keyring cannot be pickled (it would copy key material)")

    def __repr__(self) -> str:
        return (
            f"Keyring(versions={self.versions!r}, current={self._current.version!r}, "
            f"source={self.source!r})"
        )

    __str__ = __repr__


# --- decoding helpers (messages name the variable, never the value) --------------------------


def _decode_b64(text: str, where: str, *, exact: int | None = KEY_BYTES, minimum: int = 0) -> bytes:
    compact = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(
            f"{where} is not valid base64 (make one with `dualwrite keys generate`)"
        ) from None
    if exact is not None and len(raw) != exact:
        raise KeyringError(
            f"{where} has the wrong length: must be {exact} bytes, got {len(raw)} bytes "
            "(make one with `dualwrite keys generate`)"
        )
    if len(raw) < minimum:
        raise KeyringError(
            f"{where} is too short: must be at least {minimum} bytes, got {len(raw)} bytes"
        )
    return raw


def _check_label(label: str, where: str) -> str:
    if not is_version_label(label):
        raise KeyringError(f"{where} has a bad version label ({_LABEL_HELP})")
    return label


def _no_duplicate_material(keys: list[DataKey], where: str) -> None:
    seen: dict[bytes, str] = {}
    for key in keys:
        other = seen.setdefault(key.reveal(), key.version)
        if other != key.version:
            raise KeyringError(f"{where}: versions {other} and {key.version} hold the same key")


def _secret(value: Any) -> str:
    """The text of a SecretStr / str setting; '' when unset."""
    if value is None:
        return ""
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    return str(value).strip()


def _file_setting(value: Any) -> Path | None:
    if value is None or str(value).strip() in ("", "."):
        return None
    return Path(value)


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
        lifetime = int(s.key_lifetime_days)
        now = _utc(self._now, "now") if self._now else datetime.now(UTC)
        current_setting = (s.encryption_current_key or "").strip() or None
        if single and many:
            raise KeyringError("set ENCRYPTION_KEY or ENCRYPTION_KEYS, not both")
        if single:
            version = _check_label(
                (s.encryption_key_version or "v1").strip(), "ENCRYPTION_KEY_VERSION"
            )
            material = _decode_b64(single, "ENCRYPTION_KEY")
            if current_setting is not None and current_setting != version:
                _check_label(current_setting, "ENCRYPTION_CURRENT_KEY")
                raise KeyringError(
                    f"ENCRYPTION_CURRENT_KEY={current_setting} names no configured key "
                    f"(ENCRYPTION_KEY is version {version})"
                )
            key = DataKey(version, material, created_at=now, lifetime_days=lifetime)
            return Keyring([key], source="ENCRYPTION_KEY")
        if many:
            return self._load_many(many, current_setting, now, lifetime)
        raise MissingKeyError(_NO_KEY)

    @staticmethod
    def _load_many(text: str, current: str | None, now: datetime, lifetime: int) -> Keyring:
        keys: list[DataKey] = []
        entries = [e for e in re.split(r"[,\s]+", text) if e]
        for n, entry in enumerate(entries, start=1):
            label, sep, b64 = entry.partition("=")
            where = f"ENCRYPTION_KEYS entry {n}"
            if not sep:
                raise KeyringError(f"{where} is not of the form v<N>=<base64 key>")
            _check_label(label, where)
            if any(k.version == label for k in keys):
                raise KeyringError(f"ENCRYPTION_KEYS lists version {label} twice")
            material = _decode_b64(b64, f"{where} ({label})")
            keys.append(DataKey(label, material, created_at=now, lifetime_days=lifetime))
        if not keys:
            raise MissingKeyError(_NO_KEY)
        _no_duplicate_material(keys, "ENCRYPTION_KEYS")
        if current is not None:
            _check_label(current, "ENCRYPTION_CURRENT_KEY")
            if all(k.version != current for k in keys):
                raise KeyringError(
                    f"ENCRYPTION_CURRENT_KEY={current} is not in ENCRYPTION_KEYS "
                    f"(holds {', '.join(sorted((k.version for k in keys), key=_number))})"
                )
        return Keyring(keys, current, source="ENCRYPTION_KEYS")


def _number(label: str) -> int:
    return int(label[1:])


class FileKeyProvider:
    """Keys with metadata from a JSON file (``ENCRYPTION_KEYS_FILE``)::

        {"current": "v2",
         "keys": [{"version": "v1", "key": "<b64>", "created_at": "2025-01-01T00:00:00Z",
                   "expires_at": "2025-04-01T00:00:00Z"},
                  {"version": "v2", "key": "<b64>", "created_at": "2025-03-20T00:00:00Z"}]}

    ``current`` defaults to the highest version; ``created_at`` to the load time; ``expires_at``
    to ``created_at`` + ``lifetime_days``. Dates without a zone are UTC. Reading the file is
    the only I/O in this module.
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
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyringError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
        except UnicodeDecodeError:
            raise KeyringError(f"{where}: not UTF-8 text") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyringError(f"{where}: not valid JSON (line {exc.lineno})") from None
        return self.parse(doc, where=where)

    def parse(self, doc: Any, *, where: str = "keys file") -> Keyring:
        """Build the keyring from an already-decoded JSON document (see the class docstring)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise KeyringError(f'{where}: expected an object with a "keys" list')
        now = _utc(self._now, "now") if self._now else datetime.now(UTC)
        keys: list[DataKey] = []
        for n, item in enumerate(doc["keys"]):
            at = f"{where}: keys[{n}]"
            if not isinstance(item, dict):
                raise KeyringError(f"{at} is not an object")
            label = item.get("version")
            if not isinstance(label, str):
                raise KeyringError(f'{at} needs a "version" string')
            _check_label(label, f"{at}.version")
            if any(k.version == label for k in keys):
                raise KeyringError(f"{where}: version {label} is listed twice")
            b64 = item.get("key")
            if not isinstance(b64, str):
                raise KeyringError(f'{at} ({label}) needs a "key" string (base64)')
            material = _decode_b64(b64, f"{at}.key ({label})")
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
        if not keys:
            raise KeyringError(f'{where}: the "keys" list is empty')
        _no_duplicate_material(keys, where)
        current = doc.get("current")
        if current is not None:
            if not isinstance(current, str):
                raise KeyringError(f'{where}: "current" must be a version string')
            _check_label(current, f'{where}: "current"')
            if all(k.version != current for k in keys):
                raise KeyringError(f'{where}: "current" version {current} is not in "keys"')
        return Keyring(keys, current, source=f"ENCRYPTION_KEYS_FILE ({self.path})")


def _parse_time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise KeyringError(f"{where} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise KeyringError(f"{where} is not an ISO 8601 date/time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


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
    sources = [
        name
        for name, present in (
            ("ENCRYPTION_KEY", bool(_secret(settings.encryption_key))),
            ("ENCRYPTION_KEYS", bool(_secret(settings.encryption_keys))),
            ("ENCRYPTION_KEYS_FILE", _file_setting(settings.encryption_keys_file) is not None),
        )
        if present
    ]
    if not sources:
        raise MissingKeyError(_NO_KEY)
    if len(sources) > 1:
        raise KeyringError(f"more than one key source is set ({', '.join(sources)}); set one")
    if sources[0] == "ENCRYPTION_KEYS_FILE":
        path = _file_setting(settings.encryption_keys_file)
        assert path is not None
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
    return _decode_b64(text, "BLIND_INDEX_KEY", exact=None, minimum=KEY_BYTES)
