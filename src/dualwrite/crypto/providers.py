"""Where keys come from: the key providers and the settings entry points (pure but for one file).

A :class:`KeyProvider` is anything with a ``load() -> Keyring`` method.
:class:`EnvKeyProvider` reads ``ENCRYPTION_KEY`` / ``ENCRYPTION_KEYS`` from the settings,
:class:`FileKeyProvider` an ``ENCRYPTION_KEYS_FILE`` JSON document; a secrets manager plugs in
as any object with a ``load`` method (``load_keyring(settings, provider=...)``).
:func:`load_keyring` picks the one configured source; :func:`load_blind_index_key` reads the
separate ``BLIND_INDEX_KEY``; :func:`generate_key` makes a fresh key for either.

>>> ring = FileKeyProvider("keys.json").parse({"keys": [{"version": "v1", "key": generate_key()}]})
>>> ring.current.version, ring.source
('v1', 'ENCRYPTION_KEYS_FILE (keys.json)')
>>> FileKeyProvider("keys.json").parse({"keys": [{"version": "v01", "key": generate_key()}]})
Traceback (most recent call last):
    ...
dualwrite.errors.KeyringError: keys file: keys[0].version has a bad version label (...)

Messages about malformed keys name the variable and the problem only, never the key. The only
I/O is :class:`FileKeyProvider` reading the one file it is given. Import these names from
:mod:`dualwrite.crypto` (or :mod:`dualwrite.crypto.keyring`, which re-exports them).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dualwrite.crypto.keyring import (
    _LABEL_HELP,
    _MAKE_ONE,
    _NO_KEY,
    DEFAULT_LIFETIME_DAYS,
    KEY_BYTES,
    DataKey,
    Keyring,
    _utc,
    is_version_label,
)
from dualwrite.errors import KeyringError, MissingKeyError

if TYPE_CHECKING:
    from dualwrite.config import Settings

__all__ = [
    "EnvKeyProvider",
    "FileKeyProvider",
    "KeyProvider",
    "generate_key",
    "load_blind_index_key",
    "load_keyring",
]


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
