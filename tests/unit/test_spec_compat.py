"""Specs stored by older versions keep decrypting; schema-qualified names and typed fields."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
from dualwrite.phases import behaviour
from dualwrite.runtime.codec import FieldCodec
from dualwrite.schema import sql
from dualwrite.spec import FieldSpec, MigrationSpec
from tests.integration.clients_support import aad

KEY = bytes(range(32))
OLD_CLIENTS_SPEC = {  # dualwrite_migrations.spec as earlier versions stored it
    "name": "clients_pii",
    "table": "clients",
    "primary_key": "id",
    "scope_column": "workspace_id",
    "fields": [{"name": "email", "blind_index": "email"}, {"name": "first_name",
                                                            "blind_index": None}],
}  # fmt: skip


def test_an_old_reference_spec_reads_as_text_fields_bound_to_its_table() -> None:
    spec = MigrationSpec.from_json(OLD_CLIENTS_SPEC)
    assert spec.aad_table == "clients" and spec.field("email").type == "text"
    row_key = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
    nonce = os.urandom(12)  # a ciphertext written by an earlier version: table "clients"
    body = AESGCM(KEY).encrypt(nonce, b"ada@example.com", aad("v1", "clients", "email", row_key))
    codec = FieldCodec(spec, FieldCipher(Keyring([DataKey("v1", KEY)])), BlindIndex(bytes(32)))
    layout = codec.layout(behaviour("finalized"), ["email_encrypted"])
    got = codec.decode(layout, (b"v1:" + nonce + body,), row_key, ["email"])
    assert got == {"email": "ada@example.com"}
    assert MigrationSpec.from_json(spec.to_json()) == spec


def test_schema_qualified_names_are_quoted_and_derived_names_stay_short() -> None:
    spec = MigrationSpec(
        "p_pii", "clinic." + "t" * 51, (FieldSpec("user", "exact", "date", unique=True),)
    )
    assert spec.aad_table == "clinic." + "t" * 51
    function = sql.stale_guard_function(spec)
    assert function.startswith('"clinic"."dualwrite_') and len(function.split(".")[1]) <= 65
    ddl = "\n".join(sql.stale_guard_ddl(spec))
    assert 'NEW."user_uidx" := NULL;' in ddl and 'ON "clinic"."' in ddl
    assert len(sql.blind_index_name(spec, "user_bidx").encode()) <= 63


def test_typed_fields_encrypt_the_stored_value_and_read_back_their_type() -> None:
    spec = MigrationSpec("p_pii", "clinic.p", (FieldSpec("dob", "exact", "date"),))
    codec = FieldCodec(spec, FieldCipher(Keyring([DataKey("v1", KEY)])), BlindIndex(bytes(32)))
    born = dt.datetime(1980, 1, 2, 23, 30)  # a datetime into a date column keeps its date
    cols = codec.write_columns(behaviour("dual_write"), {"dob": born}, "7")
    plain = AESGCM(KEY).decrypt(cols["dob_encrypted"][3:15], cols["dob_encrypted"][15:],
                                aad("v1", "clinic.p", "dob", "7"))  # fmt: skip
    assert plain == b"1980-01-02"
    layout = codec.layout(behaviour("finalized"), ["dob_encrypted"])
    assert codec.decode(layout, (cols["dob_encrypted"],), "7") == {"dob": dt.date(1980, 1, 2)}
    assert cols["dob_bidx"] == codec.bidx_for("dob", dt.date(1980, 1, 2))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"type": "json"}, "keeps duplicate keys"),
        ({"type": "real"}, "floating-point"),
        ({"type": "date", "blind_index": "email"}, "needs a text column"),
        ({"type": "jsonb", "unique": True}, "unique is not supported on jsonb"),
    ],
)
def test_refused_field_declarations(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        FieldSpec("x", **kwargs)  # type: ignore[arg-type]
