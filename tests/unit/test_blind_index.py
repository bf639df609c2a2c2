"""BlindIndex: the documented HMAC construction, normalisation per kind, key and kind
separation, configurable length, and no key material in its repr."""

from __future__ import annotations

import base64
import doctest
import hashlib
import hmac
import os
import pickle

import pytest

import dualwrite.crypto.blind_index
from dualwrite.config import Settings
from dualwrite.crypto import BlindIndex
from dualwrite.errors import KeyringError, MissingKeyError

KEY = bytes(range(200, 232))


@pytest.fixture
def bidx() -> BlindIndex:
    return BlindIndex(KEY)


def test_matches_independent_hmac(bidx: BlindIndex) -> None:
    expected = hmac.new(KEY, b"dualwrite.bidx.v1|email|ada@example.com", hashlib.sha256).digest()
    assert bidx.compute("ada@example.com", "email") == expected[:16]
    phone = hmac.new(KEY, b"dualwrite.bidx.v1|phone|15550109999", hashlib.sha256).digest()
    assert BlindIndex(KEY, length=32).compute("+1 555 010 9999", "phone") == phone
    text = hmac.new(KEY, "dualwrite.bidx.v1|text|zoë ñ".encode(), hashlib.sha256).digest()
    assert bidx.compute("  ZOË   Ñ ", "text") == text[:16]


@pytest.mark.parametrize("key_bytes", [32, 63, 64, 65, 200])
def test_precomputed_key_states_are_hmac_for_every_key_length(key_bytes: int) -> None:
    # the index keeps HMAC's padded-key states, not the key: longer-than-block keys are hashed
    key = os.urandom(key_bytes)
    index = BlindIndex(key, length=32)
    for value in ("a", "x" * 63, "y" * 64, "z" * 200, "zoë"):
        message = b"dualwrite.bidx.v1|exact|" + value.encode()
        assert index.compute(value, "exact") == hmac.digest(key, message, "sha256")
        unique = b"dualwrite.uidx.v1|" + value.encode()
        assert index.unique(value) == hmac.digest(key, unique, "sha256")


def test_phone_fast_path_keeps_exactly_the_ascii_digits(bidx: BlindIndex) -> None:
    every_ascii = "".join(chr(c) for c in range(128))
    assert BlindIndex.normalize(every_ascii, "phone") == "0123456789"
    # non-ASCII input: NFKC first, then only ASCII digits stay (Arabic-Indic digits do not)
    assert BlindIndex.normalize("\uff11\u0662 3", "phone") == "13"


@pytest.mark.parametrize(
    "variant", ["ada@example.com", " Ada@Example.COM ", "ADA@EXAMPLE.COM\n", "\tada@example.com"]
)
def test_email_case_and_space(bidx: BlindIndex, variant: str) -> None:
    assert BlindIndex.normalize(variant, "email") == "ada@example.com"
    assert bidx.compute(variant, "email") == bidx.compute("ada@example.com", "email")


def test_email_inner_text_still_matters(bidx: BlindIndex) -> None:
    assert bidx.compute("ada@example.com", "email") != bidx.compute("ada@example.org", "email")
    assert bidx.compute("a.da@example.com", "email") != bidx.compute("ada@example.com", "email")


@pytest.mark.parametrize(
    "variant",
    ["+1 (555) 010-9999", "1-555-010-9999", "1.555.010.9999", "15550109999", "+1 555 010 9999"],
)
def test_phone_formats_are_equal(bidx: BlindIndex, variant: str) -> None:
    assert BlindIndex.normalize(variant, "phone") == "15550109999"
    assert bidx.compute(variant, "phone") == bidx.compute("15550109999", "phone")


def test_phone_digits_only_is_documented_choice(bidx: BlindIndex) -> None:
    # no country-code inference: a number without its country code is a different number
    assert bidx.compute("555-010-9999", "phone") != bidx.compute("+1 555-010-9999", "phone")
    full_width = "\uff15\uff15\uff15\uff10\uff11\uff10"  # full-width digits from an IME
    assert BlindIndex.normalize(full_width, "phone") == "555010"


def test_text_normalisation(bidx: BlindIndex) -> None:
    assert BlindIndex.normalize("  Mary \t Ann\n SMITH  ", "text") == "mary ann smith"
    assert bidx.compute("Straße", "text") == bidx.compute("STRASSE", "text")  # casefold
    composed, decomposed = "Zo\u00eb", "Zoe\u0308"
    assert bidx.compute(composed, "text") == bidx.compute(decomposed, "text")  # NFKC
    assert bidx.compute("mary ann", "text") != bidx.compute("maryann", "text")


@pytest.mark.parametrize(
    ("value", "kind"),
    [(None, "email"), ("", "email"), ("   ", "email"), ("n/a", "phone"), (" \t\n", "text")],
)
def test_empty_means_no_index(bidx: BlindIndex, value: str | None, kind: str) -> None:
    assert bidx.compute(value, kind) is None  # type: ignore[arg-type]


def test_key_separation() -> None:
    a, b = BlindIndex(KEY), BlindIndex(os.urandom(32))
    assert a.compute("ada@example.com", "email") != b.compute("ada@example.com", "email")
    assert a.compute("ada@example.com", "email") == BlindIndex(KEY).compute(
        "ada@example.com", "email"
    )


def test_kind_separation(bidx: BlindIndex) -> None:
    assert bidx.compute("12345", "phone") != bidx.compute("12345", "text")
    assert bidx.compute("ada", "email") != bidx.compute("ada", "text")


@pytest.mark.parametrize("length", [8, 12, 16, 32])
def test_configurable_length(length: int) -> None:
    out = BlindIndex(KEY, length=length).compute("ada@example.com", "email")
    assert out is not None and len(out) == length
    full = BlindIndex(KEY, length=32).compute("ada@example.com", "email")
    assert full is not None and full[:length] == out


@pytest.mark.parametrize("length", [7, 33, 0, True])
def test_bad_length(length: int) -> None:
    with pytest.raises(ValueError, match="8 to 32"):
        BlindIndex(KEY, length=length)


def test_bad_inputs(bidx: BlindIndex) -> None:
    with pytest.raises(KeyringError, match="at least 32 bytes"):
        BlindIndex(os.urandom(16))
    with pytest.raises(ValueError, match="kind"):
        bidx.compute("x", "name")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bidx.compute(42, "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        bidx.compute("private\ud800", "text")
    assert "private" not in str(info.value)


def test_no_key_material_in_repr() -> None:
    key = os.urandom(32)
    index = BlindIndex(key, length=12)
    for text in (repr(index), str(index)):
        assert text == "BlindIndex(length=12)"
        for form in (key.hex(), base64.b64encode(key).decode(), repr(key)):
            assert form[:12] not in text
    with pytest.raises(TypeError):
        pickle.dumps(index)


def test_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLIND_INDEX_KEY", raising=False)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        blind_index_key=base64.b64encode(KEY).decode(),  # type: ignore[arg-type]
        blind_index_bytes=10,
    )
    index = BlindIndex.from_settings(settings)
    assert index.length == 10
    assert index.compute("a@x.io", "email") == BlindIndex(KEY).compute("a@x.io", "email")[:10]  # type: ignore[index]
    with pytest.raises(MissingKeyError, match="BLIND_INDEX_KEY"):
        BlindIndex.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]


def test_docstring_examples_run() -> None:
    result = doctest.testmod(dualwrite.crypto.blind_index)
    assert result.attempted > 0 and result.failed == 0
