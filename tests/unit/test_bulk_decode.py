"""A page of rows opens column by column (``dualwrite.runtime.bulk``) and answers exactly what
each row decoded alone answers: the same values and types, the same fallbacks counted, the
same refusals, through a key rotation and with altered or missing ciphertexts. Every test runs
with the native column opener and with the Python one (``dualwrite.crypto.columns``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import uuid
from typing import Any

import pytest

from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring, columns
from dualwrite.errors import DecryptionError
from dualwrite.metrics import Metrics
from dualwrite.phases import behaviour
from dualwrite.runtime.codec import FieldCodec, read_columns
from dualwrite.spec import FieldSpec, MigrationSpec

FIELDS = [("email", "email", "character varying(40)"), ("note",), ("code", None, "character(4)"),
          ("born", None, "date")]  # fmt: skip
SPEC = MigrationSpec("t_pii", "t", tuple(FieldSpec(*f) for f in FIELDS))
IDS = [uuid.UUID(int=i + 1) for i in range(6)]


@pytest.fixture(
    autouse=True,
    params=["python"] if os.environ.get("DUALWRITE_NO_NATIVE") else ["native", "python"],
)
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once per column opener (the codecs below build their plans under it)."""
    monkeypatch.setattr(columns, "NATIVE", request.param == "native")
    return str(request.param)


def codec(*versions: str, metrics: Metrics | None = None) -> FieldCodec:
    keys = [DataKey(v, bytes([i]) * 32) for i, v in enumerate(versions or ("v1",), 1)]
    return FieldCodec(SPEC, FieldCipher(Keyring(keys)), BlindIndex(bytes(32)), metrics)


def values(i: int) -> dict[str, Any]:
    return {"email": f"p{i}@example.org", "note": f"zoë {i}", "code": "ab",
            "born": dt.date(1980, 1, 1) + dt.timedelta(days=i)}  # fmt: skip


def page(
    writer: FieldCodec, phase: str, ids: list[uuid.UUID] = IDS
) -> tuple[tuple[str, ...], list[list[Any]]]:
    """Rows as a read in ``phase`` selects them: ``id``, then the phase's field columns."""
    names = ("id", *read_columns(SPEC, behaviour(phase)))
    rows = []
    for i, pk in enumerate(ids):
        cols = writer.write_columns(behaviour("dual_write"), values(i), str(pk))
        rows.append([pk, *(cols.get(n) for n in names[1:])])
    return names, rows


def alone(reader: FieldCodec, b: Any, names: tuple[str, ...], rows: list[list[Any]]) -> list[Any]:
    layout = reader.layout(b, names)
    return [{"id": r[0], **reader.decode(layout, r, str(r[0]))} for r in rows]


def fallbacks(metrics: Metrics, field: str) -> float:
    return metrics.value("dualwrite_read_fallback_total", migration="t_pii", field=field) or 0


def test_a_page_answers_what_each_row_alone_answers_typed_values_included() -> None:
    c = codec()
    names, rows = page(c, "finalized")
    b = behaviour("finalized")
    got = c.decode_rows(c.layout(b, names), rows, ("id",), 0)
    assert got == alone(c, b, names, rows)
    assert got[2]["born"] == dt.date(1980, 1, 3) and got[2]["code"] == "ab  "  # char(4) pads
    assert got[5]["note"] == "zoë 5"


def test_a_page_mid_key_rotation_opens_every_version() -> None:
    old, both = codec("v1"), codec("v1", "v2")  # v2 current (the highest); v1 the same key
    names, rows = page(old, "finalized", IDS[:3])
    _, newer = page(both, "finalized", IDS[3:])
    again = both.write_columns(behaviour("dual_write"), values(1), str(IDS[1]))
    rows[1][2] = again[names[2]]  # one column mixes the versions within the page
    b = behaviour("finalized")
    got = both.decode_rows(both.layout(b, names), rows + newer, ("id",), 0)
    assert got == alone(both, b, names, rows + newer)
    assert rows[1][2][:3] == b"v2:" and rows[0][2][:3] == b"v1:"
    assert [r["email"] for r in got] == [f"p{i}@example.org" for i in range(3)] * 2


def test_missing_ciphertexts_fall_back_and_are_counted_once_each() -> None:
    metrics = Metrics()
    c = codec(metrics=metrics)
    names, rows = page(c, "read_switch")
    ct = names.index("note_encrypted")
    for r in rows[1:4]:  # a legacy writer's rows: plaintext only
        r[ct] = None
    b = dataclasses.replace(behaviour("read_switch"), shadow_compare=False)  # a narrow read
    got = c.decode_rows(c.layout(b, names), rows, ("id",), 0)
    assert [r["note"] for r in got] == [f"zoë {i}" for i in range(6)]
    assert fallbacks(metrics, "note") == 3 and fallbacks(metrics, "email") == 0
    assert got == alone(codec(), b, names, rows)


@pytest.mark.parametrize("head", [b"x1:", b"v1;", b"v2:", b"v"])
def test_an_altered_header_within_a_page_is_refused_not_read(head: bytes) -> None:
    # the header's bytes are not authenticated by AES-GCM: only the check refuses them
    c = codec()
    names, rows = page(c, "finalized")
    at = names.index("email_encrypted")
    rows[3][at] = head + rows[3][at][3:] if len(head) == 3 else head
    with pytest.raises(DecryptionError):
        c.decode_rows(c.layout(behaviour("finalized"), names), rows, ("id",), 0)


def test_a_ciphertext_of_another_row_within_a_page_is_refused() -> None:
    c = codec()
    names, rows = page(c, "finalized")
    at = names.index("note_encrypted")
    rows[0][at] = rows[1][at]  # valid ciphertext, bound to row 1's key: never row 0's value
    with pytest.raises(DecryptionError):
        c.decode_rows(c.layout(behaviour("finalized"), names), rows, ("id",), 0)


@pytest.mark.parametrize("digit", [b"2", b"3"])
def test_a_relabelled_version_is_refused_while_several_keys_are_held(digit: bytes) -> None:
    both = codec("v1", "v2")
    names, rows = page(codec("v1"), "finalized")
    at = names.index("email_encrypted")
    rows[2][at] = b"v" + digit + rows[2][at][2:]  # a v1 value claiming v2 (held) or v3 (not)
    with pytest.raises(DecryptionError):
        both.decode_rows(both.layout(behaviour("finalized"), names), rows, ("id",), 0)
