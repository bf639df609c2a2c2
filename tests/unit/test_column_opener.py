"""A column opener (``dualwrite.crypto.columns``) answers what :meth:`FieldCipher.decrypt` answers
for every value of a column, or ``None`` (the caller's general path then decides): never another
value, for the native opener and the Python one alike."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualwrite.crypto import DataKey, FieldCipher, Keyring, associated_data, columns
from dualwrite.crypto.columns import column_opener

OPT_OUT = bool(os.environ.get("DUALWRITE_NO_NATIVE"))
KINDS = ["python"] if OPT_OUT else ["native", "python"]
ONE = FieldCipher(Keyring([DataKey("v1", bytes([1]) * 32)]))
TWO = FieldCipher(Keyring([DataKey("v1", bytes([1]) * 32), DataKey("v2", bytes([2]) * 32)]))


def opener(kind: str, cipher: FieldCipher = ONE, column: str = "note") -> columns.ColumnOpener:
    return column_opener(cipher, "public.t", column, native=kind == "native")


def sealed(values: list[str], keys: list[str], cipher: FieldCipher = ONE) -> list[Any]:
    return [cipher.encrypt(v, table="public.t", column="note", row_key=k)
            for v, k in zip(values, keys, strict=True)]  # fmt: skip


@pytest.mark.skipif(OPT_OUT, reason="DUALWRITE_NO_NATIVE is set: the Python path by choice")
def test_the_native_opener_is_built_and_chosen() -> None:
    # an install whose build hook silently failed would run every read on the slower path
    assert columns.NATIVE, "dualwrite.crypto._gcm is not built (see hatch_build.py)"
    assert type(opener("native")).__name__ == "_Native"


def test_dualwrite_no_native_chooses_the_python_path() -> None:
    code = "from dualwrite.crypto import columns; print(columns.NATIVE)"
    env = {**os.environ, "DUALWRITE_NO_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.text(max_size=300), min_size=1, max_size=20),
    key_size=st.integers(1, 40),
)
def test_every_value_opens_as_decrypt_opens_it(kind: str, values: list[str], key_size: int) -> None:
    keys = [f"{i:0{key_size}d}"[-key_size:] + "é" for i in range(len(values))]  # multi-byte
    cts = sealed(values, keys)
    assert opener(kind)(cts, [k.encode() for k in keys]) == values
    assert opener(kind)(tuple(cts), tuple(k.encode() for k in keys)) == values  # a page's column
    assert values == [ONE.decrypt(c, table="public.t", column="note", row_key=k)
                      for c, k in zip(cts, keys, strict=True)]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_a_page_mid_rotation_opens_each_value_with_its_own_version(kind: str) -> None:
    keys = [str(i) for i in range(6)]
    cts = sealed(["a", "b", "c"], keys[:3], ONE) + sealed(["d", "e", "f"], keys[3:], TWO)
    assert [c[:3] for c in cts] == [b"v1:"] * 3 + [b"v2:"] * 3
    assert opener(kind, TWO)(cts, [k.encode() for k in keys]) == list("abcdef")
    assert opener(kind, ONE)(cts, [k.encode() for k in keys]) is None  # v2 not held


@pytest.mark.parametrize("kind", KINDS)
def test_any_altered_byte_anywhere_is_refused(kind: str) -> None:
    (ct,) = sealed(["Presenting: insomnia"], ["42"])
    open_ = opener(kind)
    for i in range(len(ct)):
        for flip in (0x01, 0x80):
            bad = ct[:i] + bytes([ct[i] ^ flip]) + ct[i + 1 :]
            assert open_([bad], [b"42"]) is None, (i, flip)
    for cut in (0, 1, 3, 15, 30, len(ct) - 1):
        assert open_([ct[:cut]], [b"42"]) is None
    assert open_([ct + b"\0"], [b"42"]) is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_value_moved_to_another_row_or_column_is_refused(kind: str) -> None:
    cts = sealed(["x", "y"], ["1", "2"])
    assert opener(kind)(cts[::-1], [b"1", b"2"]) is None  # the rows' values swapped
    assert opener(kind, column="email")(cts, [b"1", b"2"]) is None  # another column's key
    assert opener(kind)(cts, [b"1", b"2"]) == ["x", "y"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "odd",
    [None, b"", b"v12:" + bytes(40), b"w1:" + bytes(40), "v1:text", 7],
    ids=["none", "empty", "two-digit-version", "other-header", "str", "int"],
)
def test_a_column_with_anything_unusual_goes_to_the_general_path(kind: str, odd: Any) -> None:
    cts = [*sealed(["x", "y"], ["1", "2"]), odd]
    assert opener(kind)(cts, [b"1", b"2", b"3"]) is None


@pytest.mark.parametrize("kind", KINDS)
def test_plaintext_that_is_not_utf8_goes_to_the_general_path(kind: str) -> None:
    aad = associated_data("v1", "public.t", "note", "1")
    ct = ONE.seal("v1", os.urandom(12), b"\xff\xfe", aad)
    assert opener(kind)([ct], [b"1"]) is None


@pytest.mark.parametrize("kind", KINDS)
def test_empty_and_long_row_keys(kind: str) -> None:
    long_key = "k" * 200  # beyond the precomputed prefixes: the general path
    cts = sealed(["x"], [long_key])
    assert opener(kind)(cts, [long_key.encode()]) is None
    assert opener(kind)([], []) == []


@pytest.mark.skipif(OPT_OUT, reason="DUALWRITE_NO_NATIVE is set")
def test_the_native_module_refuses_a_malformed_call_with_a_clear_error() -> None:
    gcm = columns._gcm
    assert gcm is not None
    with pytest.raises(TypeError, match="32-byte key"):
        gcm.open_column({49: (b"short", ())}, [], [])
    with pytest.raises(ValueError, match="differ in length"):
        gcm.open_column({}, [b""], [])
    with pytest.raises(TypeError, match="lists or tuples"):
        gcm.open_column({}, iter([b""]), [b""])


@pytest.mark.parametrize("kind", KINDS)
def test_no_key_material_in_an_openers_repr(kind: str) -> None:
    text = repr(opener(kind))
    assert "key version" in text and "\\x01" not in text and "01" * 4 not in text
