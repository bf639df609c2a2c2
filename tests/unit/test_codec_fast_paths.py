"""The codec's inlined read/write paths agree with the checked cipher and value paths, refuse
what those refuse, and time a sample of single-row operations."""

from __future__ import annotations

import pytest

from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
from dualwrite.errors import DecryptionError
from dualwrite.metrics import Metrics
from dualwrite.phases import behaviour
from dualwrite.runtime.codec import TIMED_EVERY, FieldCodec, read_columns
from dualwrite.spec import FieldSpec, MigrationSpec

KEY = bytes(range(32))
SPEC = MigrationSpec(
    "t_pii",
    "t",
    (
        FieldSpec("email", "email", "character varying(20)"),
        FieldSpec("note"),
        FieldSpec("code", None, "character(4)"),
    ),
)
ROW_KEY = "7f9a1c2e-0000-4000-8000-000000000001"


def codec(metrics: Metrics | None = None, *versions: str) -> FieldCodec:
    keys = [DataKey(v, bytes([i]) * 32) for i, v in enumerate(versions or ("v1",), 1)]
    return FieldCodec(SPEC, FieldCipher(Keyring(keys)), BlindIndex(KEY), metrics)


def finalized_row(c: FieldCodec, values: dict[str, object]) -> tuple[object, ...]:
    cols = c.write_columns(behaviour("finalized"), values, ROW_KEY)
    return tuple(cols.get(f.ciphertext_column) for f in SPEC.fields)


def test_inlined_write_and_read_agree_with_the_checked_cipher() -> None:
    c = codec()
    assert c.cipher is not None
    values = {"email": "Ada@Example.org", "note": "zoë\u2028", "code": "ab"}
    cols = c.write_columns(behaviour("dual_write"), values, ROW_KEY)
    for f in SPEC.fields:
        text = c.cipher.decrypt(
            cols[f.ciphertext_column], table="t", column=f.name, row_key=ROW_KEY
        )
        assert text == ("ab  " if f.name == "code" else values[f.name])  # char(4) pads
    assert cols["email_bidx"] == BlindIndex(KEY).stored("Ada@Example.org", "email")
    # and the other way round: what the checked encrypt made, the inlined decode reads
    made = tuple(
        c.cipher.encrypt(str(values[f.name]), table="t", column=f.name, row_key=ROW_KEY)
        for f in SPEC.fields
    )
    layout = c.layout(behaviour("finalized"), read_columns(SPEC, behaviour("finalized")))
    assert c.decode(layout, made, ROW_KEY) == values


@pytest.mark.parametrize("value", ["x" * 21, "nul\x00inside"])
def test_a_text_value_the_column_cannot_store_is_refused_as_before(value: str) -> None:
    c = codec()
    with pytest.raises(ValueError) as inlined:
        c.write_columns(behaviour("dual_write"), {"email": value}, ROW_KEY)
    with pytest.raises(ValueError) as checked:
        SPEC.fields[0].value_type.encode(value)  # the value type's own refusal
    assert type(inlined.value) is type(checked.value)
    assert value not in str(inlined.value)


@pytest.mark.parametrize(("head", "tail"), [(b"x1:", 3), (b"v1;", 3), (b"v2:", 3)])
def test_an_altered_version_prefix_is_refused_not_read(head: bytes, tail: int) -> None:
    c = codec()
    row = finalized_row(c, {"email": "a@b.c", "note": "n", "code": "c"})
    bad = (head + row[0][tail:], *row[1:])  # type: ignore[index]
    layout = c.layout(behaviour("finalized"), read_columns(SPEC, behaviour("finalized")))
    with pytest.raises(DecryptionError):
        c.decode(layout, bad, ROW_KEY)


def test_a_two_digit_key_version_reads_through_the_checked_path() -> None:
    old = codec(None, "v10")
    row = finalized_row(old, {"email": "a@b.c", "note": "n", "code": "c"})
    assert row[0][:4] == b"v10:"  # type: ignore[index]
    layout = old.layout(behaviour("finalized"), read_columns(SPEC, behaviour("finalized")))
    assert old.decode(layout, row, ROW_KEY)["email"] == "a@b.c"


def test_single_rows_are_timed_one_in_n_the_first_always_and_a_bulk_read_once() -> None:
    metrics = Metrics()
    c = codec(metrics)

    def count(op: str) -> float:
        return metrics.value("dualwrite_crypto_operation_duration_seconds_count", operation=op) or 0

    row = finalized_row(c, {"email": "a@b.c", "note": "n", "code": "c"})
    assert count("encrypt") == 1  # the first write is timed
    for _ in range(2 * TIMED_EVERY - 1):
        finalized_row(c, {"note": "n"})
    assert count("encrypt") == 2
    layout = c.layout(behaviour("finalized"), read_columns(SPEC, behaviour("finalized")))
    c.decode(layout, row, ROW_KEY)
    reads_before = count("decrypt")
    for _ in range(2 * TIMED_EVERY):
        c.decode(layout, row, ROW_KEY)
    assert count("decrypt") - reads_before == 2
    names = ("id", *read_columns(SPEC, behaviour("finalized")))
    c.decode_rows(c.layout(behaviour("finalized"), names), [(ROW_KEY, *row)] * 50, ("id",), 0)
    assert count("decrypt") - reads_before == 3  # the statement's mean, once
