"""Keyring, DataKey and the key sources: valid configurations, every malformed one refused with a
one-line KeyringError naming the variable, and no key material in any repr or message."""

from __future__ import annotations

import base64
import doctest
import json
import os
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import dualwrite.crypto.keyring
from dualwrite.config import Settings
from dualwrite.crypto import (
    DataKey,
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    Keyring,
    generate_key,
    load_blind_index_key,
    load_keyring,
)
from dualwrite.errors import ConfigError, KeyringError, MissingKeyError

ENV_VARS = (
    "ENCRYPTION_KEY",
    "ENCRYPTION_KEY_VERSION",
    "ENCRYPTION_KEYS",
    "ENCRYPTION_CURRENT_KEY",
    "ENCRYPTION_KEYS_FILE",
    "KEY_LIFETIME_DAYS",
    "BLIND_INDEX_KEY",
    "BLIND_INDEX_BYTES",
)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


K1, K2, K3 = os.urandom(32), os.urandom(32), os.urandom(32)


def env_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Settings read from exactly these environment variables (no .env file)."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def assert_no_material(text: str, *secrets: bytes | str) -> None:
    """Neither raw bytes, hex nor base64 of any secret — not even a 9-byte fragment."""
    for secret in secrets:
        raw = secret.encode() if isinstance(secret, str) else secret
        forms = [raw.hex(), b64(raw), base64.urlsafe_b64encode(raw).decode(), repr(raw)[2:-1]]
        forms.append(raw.decode("latin-1"))
        for form in forms:
            form = form.rstrip("=")
            for i in range(max(1, len(form) - 11)):
                assert form[i : i + 12] not in text, f"key material leaked into {text!r}"


# --- DataKey / Keyring -----------------------------------------------------------------------


def test_data_key_basics() -> None:
    key = DataKey("v12", K1, created_at=T0)
    assert (key.version, key.number, key.created_at) == ("v12", 12, T0)
    assert key.expires_at == T0 + timedelta(days=90)
    assert DataKey("v1", K1, created_at=T0, lifetime_days=7).expires_at == T0 + timedelta(days=7)
    explicit = DataKey("v1", K1, created_at=T0, expires_at=T0 + timedelta(days=1))
    assert explicit.expires_at == T0 + timedelta(days=1)
    assert key.reveal() == K1
    assert repr(key) == "DataKey(version='v12', expires_at='2025-04-01T00:00:00+00:00')"
    with pytest.raises(AttributeError):
        key.version = "v2"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        key._material = b"x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("version", "material", "kwargs", "match"),
    [
        ("v1", os.urandom(16), {}, "32 bytes"),
        ("v1", os.urandom(33), {}, "32 bytes"),
        ("1", K1, {}, "version label"),
        ("v0", K1, {}, "version label"),
        ("v01", K1, {}, "version label"),
        ("v1234567", K1, {}, "version label"),
        ("v1", K1, {"created_at": datetime(2025, 1, 1)}, "timezone"),
        ("v1", K1, {"created_at": T0, "expires_at": T0}, "after"),
        ("v1", K1, {"lifetime_days": 0}, "at least 1 day"),
    ],
)
def test_data_key_refuses(version: str, material: bytes, kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(KeyringError, match=match) as info:
        DataKey(version, material, **kwargs)
    assert_no_material(str(info.value), material)


def test_keys_do_not_pickle() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(DataKey("v1", K1))


def test_keyring_versions_current_get() -> None:
    ring = Keyring([DataKey("v10", K1), DataKey("v2", K2), DataKey("v9", K3)])
    assert ring.versions == ("v2", "v9", "v10")
    assert ring.current.version == "v10"
    assert ring.get("v9").reveal() == K3
    assert [k.version for k in ring] == ["v2", "v9", "v10"]
    assert Keyring([DataKey("v1", K1), DataKey("v2", K2)], "v1").current.version == "v1"
    with pytest.raises(MissingKeyError, match="v3 is not in the keyring"):
        ring.get("v3")
    with pytest.raises(MissingKeyError, match="invalid label"):
        ring.get(b64(K1))


def test_keyring_refuses_duplicates_missing_current_and_empty() -> None:
    with pytest.raises(KeyringError, match="duplicate key version v1"):
        Keyring([DataKey("v1", K1), DataKey("v1", K2)])
    with pytest.raises(KeyringError, match="v3 is not in the keyring"):
        Keyring([DataKey("v1", K1)], current="v3")
    with pytest.raises(MissingKeyError):
        Keyring([])


def test_keyring_rotation_and_expiry() -> None:
    ring = Keyring([DataKey("v1", K1, created_at=T0, lifetime_days=30)])
    rotated = ring.with_key(
        DataKey("v2", K2, created_at=T0 + timedelta(days=25)), make_current=True
    )
    assert rotated.current.version == "v2" and rotated.versions == ("v1", "v2")
    assert ring.with_key(DataKey("v2", K2)).current.version == "v1"
    now = T0 + timedelta(days=20)
    assert rotated.expiring(timedelta(days=5), now=now) == []
    assert [k.version for k in rotated.expiring(timedelta(days=10), now=now)] == ["v1"]
    assert [k.version for k in rotated.expiring(timedelta(0), now=T0 + timedelta(days=200))] == [
        "v1",
        "v2",
    ]


def test_reprs_carry_no_material() -> None:
    ring = Keyring([DataKey("v1", K1), DataKey("v2", K2)])
    for text in (repr(ring), str(ring), repr(ring.current), str(ring.get("v1"))):
        assert_no_material(text, K1, K2)
        assert "v" in text


# --- environment sources ---------------------------------------------------------------------


def test_single_key(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = load_keyring(env_settings(monkeypatch, ENCRYPTION_KEY=b64(K1)))
    assert ring.versions == ("v1",) and ring.current.reveal() == K1
    assert ring.source == "ENCRYPTION_KEY"
    s = env_settings(monkeypatch, ENCRYPTION_KEY=b64(K1), ENCRYPTION_KEY_VERSION="v3")
    assert load_keyring(s).current.version == "v3"
    url_safe = base64.urlsafe_b64encode(K1).decode()
    assert load_keyring(env_settings(monkeypatch, ENCRYPTION_KEY=url_safe)).current.reveal() == K1


def test_key_list(monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"v1={b64(K1)}, v2={b64(K2)}\nv10={b64(K3)},"
    ring = load_keyring(env_settings(monkeypatch, ENCRYPTION_KEYS=text))
    assert ring.versions == ("v1", "v2", "v10") and ring.current.version == "v10"
    s = env_settings(monkeypatch, ENCRYPTION_KEYS=text, ENCRYPTION_CURRENT_KEY="v2")
    ring = load_keyring(s, now=T0)
    assert ring.current.reveal() == K2 and ring.source == "ENCRYPTION_KEYS"
    assert ring.get("v1").expires_at == T0 + timedelta(days=90)
    s = env_settings(monkeypatch, ENCRYPTION_KEYS=text, KEY_LIFETIME_DAYS="30")
    assert load_keyring(s, now=T0).get("v2").expires_at == T0 + timedelta(days=30)


def test_no_key_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingKeyError) as info:
        load_keyring(env_settings(monkeypatch))
    assert str(info.value) == (
        "no encryption key configured: set ENCRYPTION_KEY (make one with `dualwrite keys generate`)"
    )
    with pytest.raises(MissingKeyError):
        load_keyring(env_settings(monkeypatch, ENCRYPTION_KEY="  ", ENCRYPTION_KEYS=""))


SHORT = os.urandom(16)
MALFORMED_ENV = {
    "bad base64": ({"ENCRYPTION_KEY": "not*base64*" + b64(K1)[:20]}, "ENCRYPTION_KEY.*base64"),
    "16-byte key": ({"ENCRYPTION_KEY": b64(SHORT)}, "ENCRYPTION_KEY.*32 bytes, got 16"),
    "bad version label": (
        {"ENCRYPTION_KEY": b64(K1), "ENCRYPTION_KEY_VERSION": "version1"},
        "ENCRYPTION_KEY_VERSION.*version label",
    ),
    "current not the single key": (
        {"ENCRYPTION_KEY": b64(K1), "ENCRYPTION_CURRENT_KEY": "v2"},
        "ENCRYPTION_CURRENT_KEY v2 is not in ENCRYPTION_KEY",
    ),
    "duplicate versions": (
        {"ENCRYPTION_KEYS": f"v1={b64(K1)},v1={b64(K2)}"},
        "ENCRYPTION_KEYS lists version v1 twice",
    ),
    "same key twice": (
        {"ENCRYPTION_KEYS": f"v1={b64(K1)},v2={b64(K1)}"},
        "versions v1 and v2 hold the same key",
    ),
    "current missing": (
        {"ENCRYPTION_KEYS": f"v1={b64(K1)},v2={b64(K2)}", "ENCRYPTION_CURRENT_KEY": "v3"},
        r"ENCRYPTION_CURRENT_KEY v3 is not in ENCRYPTION_KEYS \(holds v1, v2\)",
    ),
    "current bad label": (
        {"ENCRYPTION_KEYS": f"v1={b64(K1)}", "ENCRYPTION_CURRENT_KEY": b64(K2)},
        "ENCRYPTION_CURRENT_KEY.*version label",
    ),
    "entry without label": (
        {"ENCRYPTION_KEYS": f"v1={b64(K1)},{b64(K2)}"},
        "ENCRYPTION_KEYS entry 2",
    ),
    "entry with bad label": (
        {"ENCRYPTION_KEYS": f"key1={b64(K1)}"},
        "ENCRYPTION_KEYS entry 1.*version label",
    ),
    "bad base64 in list": (
        {"ENCRYPTION_KEYS": f"v1={b64(K1)},v2=%%{b64(K2)}"},
        r"ENCRYPTION_KEYS entry 2 \(v2\).*base64",
    ),
    "short key in list": (
        {"ENCRYPTION_KEYS": f"v1={b64(SHORT)}"},
        r"ENCRYPTION_KEYS entry 1 \(v1\).*32 bytes",
    ),
    "two sources": (
        {"ENCRYPTION_KEY": b64(K1), "ENCRYPTION_KEYS": f"v2={b64(K2)}"},
        "more than one key source.*ENCRYPTION_KEY, ENCRYPTION_KEYS",
    ),
    "key and file": (
        {"ENCRYPTION_KEY": b64(K1), "ENCRYPTION_KEYS_FILE": "/nonexistent/keys.json"},
        "more than one key source.*ENCRYPTION_KEY, ENCRYPTION_KEYS_FILE",
    ),
}


@pytest.mark.parametrize(("env", "match"), MALFORMED_ENV.values(), ids=MALFORMED_ENV.keys())
def test_malformed_env_sources(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    with pytest.raises(KeyringError, match=match) as info:
        load_keyring(env_settings(monkeypatch, **env))
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ConfigError)
    assert_no_material(message, K1, K2, SHORT, *(v for v in env.values() if len(v) >= 12))


def test_env_provider_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = EnvKeyProvider(env_settings(monkeypatch, ENCRYPTION_KEY=b64(K1)), now=T0)
    assert isinstance(provider, KeyProvider)
    assert provider.load().current.created_at == T0


def test_custom_provider_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    class Vault:
        def load(self) -> Keyring:
            return Keyring([DataKey("v7", K3)], source="vault")

    ring = load_keyring(env_settings(monkeypatch), provider=Vault())
    assert ring.current.version == "v7" and ring.source == "vault"


# --- file source -----------------------------------------------------------------------------


def write_keys(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_keys(
        tmp_path,
        {
            "current": "v2",
            "keys": [
                {
                    "version": "v1",
                    "key": b64(K1),
                    "created_at": "2025-01-01T00:00:00Z",
                    "expires_at": "2025-04-01T00:00:00+00:00",
                },
                {"version": "v2", "key": b64(K2), "created_at": "2025-03-20T12:00:00"},
                {"version": "v3", "key": b64(K3)},
            ],
        },
    )
    ring = load_keyring(env_settings(monkeypatch, ENCRYPTION_KEYS_FILE=str(path)), now=T0)
    assert ring.versions == ("v1", "v2", "v3") and ring.current.version == "v2"
    assert ring.get("v1").created_at == T0
    assert ring.get("v1").expires_at == datetime(2025, 4, 1, tzinfo=UTC)
    assert ring.get("v2").expires_at == datetime(2025, 3, 20, 12, tzinfo=UTC) + timedelta(days=90)
    assert ring.get("v3").created_at == T0 and ring.get("v2").reveal() == K2
    assert ring.source.startswith("ENCRYPTION_KEYS_FILE")
    default_current = FileKeyProvider(
        write_keys(tmp_path, {"keys": [{"version": "v4", "key": b64(K1)}]})
    )
    assert default_current.load().current.version == "v4"


MALFORMED_FILES = {
    "not json": (f'{{"keys": [{{"version": "v1", "key": "{b64(K1)}"', "not valid JSON"),
    "no keys list": ({"current": "v1"}, '"keys" list'),
    "empty keys": ({"keys": []}, "lists no keys"),
    "item not object": ({"keys": [b64(K1)]}, r"keys\[0\] is not an object"),
    "bad label": ({"keys": [{"version": "one", "key": b64(K1)}]}, r"keys\[0\]\.version"),
    "key not string": ({"keys": [{"version": "v1", "key": 5}]}, '"key" string'),
    "bad base64": ({"keys": [{"version": "v1", "key": "@@" + b64(K1)}]}, "base64"),
    "short key": ({"keys": [{"version": "v1", "key": b64(SHORT)}]}, "32 bytes, got 16"),
    "duplicate": (
        {"keys": [{"version": "v1", "key": b64(K1)}, {"version": "v1", "key": b64(K2)}]},
        "lists version v1 twice",
    ),
    "current missing": (
        {"current": "v2", "keys": [{"version": "v1", "key": b64(K1)}]},
        '"current" v2 is not in',
    ),
    "bad date": (
        {"keys": [{"version": "v1", "key": b64(K1), "created_at": "yesterday"}]},
        "created_at is not an ISO 8601",
    ),
    "expires before created": (
        {
            "keys": [
                {
                    "version": "v1",
                    "key": b64(K1),
                    "created_at": "2025-02-01",
                    "expires_at": "2025-01-01",
                }
            ]
        },
        "expires_at must be after created_at",
    ),
}


@pytest.mark.parametrize(("doc", "match"), MALFORMED_FILES.values(), ids=MALFORMED_FILES.keys())
def test_malformed_key_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, doc: object, match: str
) -> None:
    path = write_keys(tmp_path, doc)
    with pytest.raises(KeyringError, match=match) as info:
        load_keyring(env_settings(monkeypatch, ENCRYPTION_KEYS_FILE=str(path)))
    message = str(info.value)
    assert "\n" not in message and "ENCRYPTION_KEYS_FILE" in message
    assert_no_material(message, K1, K2, SHORT)


def test_missing_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = env_settings(monkeypatch, ENCRYPTION_KEYS_FILE=str(tmp_path / "absent.json"))
    with pytest.raises(KeyringError, match=r"ENCRYPTION_KEYS_FILE .*absent\.json: cannot read"):
        load_keyring(s)


# --- generated keys and the blind-index key ----------------------------------------------------


def test_generate_key() -> None:
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(base64.b64decode(k, validate=True)) == 32 for k in keys)


def test_blind_index_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_blind_index_key(env_settings(monkeypatch, BLIND_INDEX_KEY=b64(K1))) == K1
    long_key = os.urandom(64)
    assert (
        load_blind_index_key(env_settings(monkeypatch, BLIND_INDEX_KEY=b64(long_key))) == long_key
    )
    with pytest.raises(MissingKeyError) as info:
        load_blind_index_key(env_settings(monkeypatch, ENCRYPTION_KEY=b64(K1)))
    assert "BLIND_INDEX_KEY" in str(info.value) and "dualwrite keys generate" in str(info.value)
    for bad, match in ((b64(SHORT), "at least 32 bytes"), ("!!" + b64(K1), "base64")):
        with pytest.raises(KeyringError, match=f"BLIND_INDEX_KEY.*{match}") as err:
            load_blind_index_key(env_settings(monkeypatch, BLIND_INDEX_KEY=bad))
        assert_no_material(str(err.value), K1, SHORT, bad)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(dualwrite.crypto.keyring)
    assert result.attempted > 0 and result.failed == 0
