"""Property tests (Hypothesis): the field cipher, blind-index normalisation, spec and identifier
validation, and the phase model, each over generated inputs rather than chosen examples.

Typed values plug in through :data:`VALUE_KINDS`: a kind is a strategy of plaintext values
and the cipher calls that encrypt and decrypt them (text and every typed column kind); add a kind
there and every cipher property runs for it too.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dualwrite.admin.router import MIGRATION_NAME_PATTERN
from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
from dualwrite.crypto.values import value_type
from dualwrite.errors import DecryptionError, IllegalTransitionError
from dualwrite.phases import BEHAVIOURS, Behaviour, Phase, ReadSource, evaluate
from dualwrite.phases.model import BackfillMode, classify_move
from dualwrite.spec import FieldSpec, MigrationSpec
from tests.unit.test_phases import good_facts

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    database=None,  # no .hypothesis folder in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

CIPHER = FieldCipher(Keyring([DataKey("v1", bytes(range(32))), DataKey("v2", bytes(range(1, 33)))]))
BIDX = BlindIndex(bytes(range(200, 232)))

identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,50}", fullmatch=True)
row_keys = st.one_of(
    st.uuids().map(str),
    st.integers(min_value=0, max_value=2**63 - 1).map(str),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40),  # never empty
)


# --- the field cipher -------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueKind:
    """Plaintext values of one kind and how the cipher takes and gives them back."""

    values: st.SearchStrategy[Any]
    encrypt: Callable[[Any, str, str, str], bytes | None]
    decrypt: Callable[[bytes, str, str, str], Any]


def _encrypt_text(value: str | None, table: str, column: str, row_key: str) -> bytes | None:
    return CIPHER.encrypt(value, table=table, column=column, row_key=row_key)


def _decrypt_text(ct: bytes, table: str, column: str, row_key: str) -> str:
    return CIPHER.decrypt(ct, table=table, column=column, row_key=row_key)


def _typed(sql_type: str, values: st.SearchStrategy[Any]) -> ValueKind:
    """A typed column's values as PostgreSQL stores them, through the field codec's canonical
    text (DESIGN §3: the ciphertext holds that text; a read gives the column's Python type)."""
    vt = value_type(sql_type)

    def encrypt(value: Any, table: str, column: str, row_key: str) -> bytes | None:
        return _encrypt_text(vt.encode(value), table, column, row_key)

    def decrypt(ct: bytes, table: str, column: str, row_key: str) -> Any:
        return vt.decode(_decrypt_text(ct, table, column, row_key))

    return ValueKind(values.map(vt.coerce), encrypt, decrypt)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20).filter(lambda s: "\x00" not in s),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8).filter(lambda s: "\x00" not in s), inner, max_size=4)
    ),
    max_leaves=12,
)
_OFFSETS = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)),
                            dt.timezone(-dt.timedelta(hours=8))])  # fmt: skip

VALUE_KINDS: dict[str, ValueKind] = {
    # any text PostgreSQL ``text`` can hold: every code point but NUL and lone surrogates
    "text": ValueKind(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=300),
        _encrypt_text,
        _decrypt_text,
    ),
    "date": _typed("date", st.dates()),
    "timestamptz": _typed(
        "timestamp with time zone",  # an instant Python's datetime can hold in UTC too
        st.datetimes(dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30), timezones=_OFFSETS),
    ),
    "timestamp(3)": _typed("timestamp(3) without time zone", st.datetimes()),
    "integer": _typed("integer", st.integers(-(2**31), 2**31 - 1)),
    "bigint": _typed("bigint", st.integers(-(2**63), 2**63 - 1)),
    "numeric(12,2)": _typed(
        "numeric(12,2)",
        st.decimals(
            min_value=-(10**9), max_value=10**9, allow_nan=False, allow_infinity=False, places=4
        ),  # rounded to 2 places
    ),
    "boolean": _typed("boolean", st.booleans()),
    "jsonb": _typed("jsonb", _JSON.filter(lambda v: v is not None)),  # None is SQL NULL
}
"""Every kind of plaintext value the cipher properties run for: text and each typed column
kind, drawn as the application sends it and compared as PostgreSQL stores it."""

kinds = pytest.mark.parametrize("kind", sorted(VALUE_KINDS))
# tampering and binding are properties of the ciphertext, whatever text it holds: text and two
# typed kinds (structured and rounded) stand for the rest
some_kinds = pytest.mark.parametrize("kind", ["jsonb", "numeric(12,2)", "text"])


@kinds
@PROPERTY
@given(data=st.data(), table=identifiers, column=identifiers, row_key=row_keys)
def test_cipher_round_trips_any_value(
    kind: str, data: st.DataObject, table: str, column: str, row_key: str
) -> None:
    k = VALUE_KINDS[kind]
    value = data.draw(k.values)
    ct = k.encrypt(value, table, column, row_key)
    assert ct is not None and ct.startswith(b"v2:")  # the current (highest) key
    assert k.decrypt(ct, table, column, row_key) == value
    assert k.encrypt(None, table, column, row_key) is None


@some_kinds
@PROPERTY
@given(data=st.data(), row_key=row_keys)
def test_any_single_bit_flip_fails_to_decrypt(kind: str, data: st.DataObject, row_key: str) -> None:
    k = VALUE_KINDS[kind]
    value = data.draw(k.values)
    ct = k.encrypt(value, "clients", "medical_history", row_key)
    assert ct is not None
    bit = data.draw(st.integers(min_value=0, max_value=len(ct) * 8 - 1))
    tampered = bytearray(ct)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionError) as caught:
        k.decrypt(bytes(tampered), "clients", "medical_history", row_key)
    with pytest.raises(DecryptionError) as garbage:  # the same error, no plaintext behind it
        k.decrypt(b"v2:" + bytes(40), "clients", "medical_history", row_key)
    shown = str(value)
    if len(shown) >= 4 and shown not in str(garbage.value):  # e.g. "valu" is in "value was"
        assert shown not in str(caught.value)  # the error never carries the plaintext


@some_kinds
@PROPERTY
@given(data=st.data(), row_key=row_keys, other=row_keys, column=identifiers)
def test_a_ciphertext_is_bound_to_its_row_and_column(
    kind: str, data: st.DataObject, row_key: str, other: str, column: str
) -> None:
    assume(other != row_key and column != "email")
    k = VALUE_KINDS[kind]
    ct = k.encrypt(data.draw(k.values), "clients", "email", row_key)
    assert ct is not None
    for table, col, key in (("clients", "email", other), ("clients", column, row_key),
                            ("patients", "email", row_key)):  # fmt: skip
        with pytest.raises(DecryptionError):
            k.decrypt(ct, table, col, key)


# --- blind-index normalisation ----------------------------------------------------------------

KINDS = ("email", "phone", "text")
_FULL_WIDTH = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}  # NFKC maps them back
_SPACES = st.text(" \t\n\u3000\u00a0", max_size=3)


@PROPERTY
@given(value=st.text(max_size=80), kind=st.sampled_from(KINDS))
def test_normalisation_is_idempotent(value: str, kind: str) -> None:
    once = BlindIndex.normalize(value, kind)  # type: ignore[arg-type]
    assert BlindIndex.normalize(once, kind) == once  # type: ignore[arg-type]
    assert BIDX.compute(once, kind) == BIDX.compute(value, kind)  # type: ignore[arg-type]


def _ascii_variant(data: st.DataObject, text: str) -> str:
    """``text`` with ASCII letters in random case and random ASCII characters full-width."""
    out = []
    for ch in text:
        if ch.isascii() and ch.isalpha() and data.draw(st.booleans()):
            ch = ch.swapcase()
        if ch in _FULL_WIDTH and data.draw(st.booleans()):
            ch = _FULL_WIDTH[ch]
        out.append(ch)
    return "".join(out)


ascii_words = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
)


@PROPERTY
@given(data=st.data(), local=ascii_words, domain=ascii_words)
def test_equal_emails_under_the_rule_give_equal_indexes(
    data: st.DataObject, local: str, domain: str
) -> None:
    email = f"{local}@{domain}"
    variant = data.draw(_SPACES) + _ascii_variant(data, email) + data.draw(_SPACES)
    assert BIDX.compute(variant, "email") == BIDX.compute(email, "email")


@PROPERTY
@given(data=st.data(), digits=st.text("0123456789", min_size=1, max_size=15))
def test_equal_phones_under_the_rule_give_equal_indexes(data: st.DataObject, digits: str) -> None:
    separated = "".join(d + data.draw(st.text(" +-.()/", max_size=2)) for d in digits)
    variant = data.draw(_SPACES) + _ascii_variant(data, separated)
    assert BIDX.compute(variant, "phone") == BIDX.compute(digits, "phone")
    assert BlindIndex.normalize(variant, "phone") == digits


@PROPERTY
@given(data=st.data(), words=st.lists(ascii_words, min_size=1, max_size=5))
def test_equal_texts_under_the_rule_give_equal_indexes(
    data: st.DataObject, words: list[str]
) -> None:
    words = [w.replace(" ", "") or "x" for w in words]
    spaced = data.draw(_SPACES) + "".join(
        _ascii_variant(data, w) + data.draw(st.text(" \t\n", min_size=1, max_size=3)) for w in words
    )
    assert BIDX.compute(spaced, "text") == BIDX.compute(" ".join(words), "text")


@PROPERTY
@given(
    a=st.text(min_size=1, max_size=40),
    b=st.text(min_size=1, max_size=40),
    kind=st.sampled_from(KINDS),
)
def test_different_normal_forms_give_different_indexes(a: str, b: str, kind: str) -> None:
    na, nb = BlindIndex.normalize(a, kind), BlindIndex.normalize(b, kind)  # type: ignore[arg-type]
    assume(na and nb and na != nb)
    assert BIDX.compute(a, kind) != BIDX.compute(b, kind)  # type: ignore[arg-type]


# --- spec and identifier validation -----------------------------------------------------------

_RULE = re.compile(r"[a-z_][a-z0-9_]{0,50}")


def _accepted(name: str) -> bool:
    try:
        FieldSpec(name)
    except ValueError:
        return False
    return True


near_identifiers = st.one_of(
    st.text(max_size=60),
    identifiers.map(lambda s: s + "\n"),
    identifiers.map(str.upper),
    identifiers.map(lambda s: "9" + s),
    st.from_regex(r"[a-z_][a-z0-9_]{51,60}", fullmatch=True),
    identifiers.map(lambda s: s + "-x"),
)


@PROPERTY
@given(name=st.one_of(identifiers, near_identifiers))
def test_an_identifier_is_accepted_exactly_when_it_follows_the_rule(name: str) -> None:
    assert _accepted(name) is bool(_RULE.fullmatch(name))
    # the admin API's path rule for migration names is the same rule
    assert bool(re.fullmatch(MIGRATION_NAME_PATTERN, name)) is bool(_RULE.fullmatch(name))


@PROPERTY
@given(
    name=identifiers,
    table=identifiers,
    pk=identifiers,
    scope=st.none() | identifiers,
    fields=st.dictionaries(
        identifiers, st.sampled_from([None, "email", "phone", "text"]), min_size=1, max_size=8
    ),
)
def test_a_spec_survives_its_stored_form(
    name: str, table: str, pk: str, scope: str | None, fields: dict[str, Any]
) -> None:
    spec = MigrationSpec(name=name, table=table, primary_key=pk, scope_column=scope,
                         fields=tuple(FieldSpec(n, k) for n, k in fields.items()))  # fmt: skip
    again = MigrationSpec.from_json(spec.to_json())
    assert again == spec and again.field_names == tuple(fields)


@PROPERTY
@given(fields=st.lists(identifiers, min_size=2, max_size=6))
def test_a_spec_refuses_a_field_twice(fields: list[str]) -> None:
    with pytest.raises(ValueError, match="listed twice"):
        MigrationSpec(name="m", table="t", fields=tuple(FieldSpec(n) for n in [*fields, fields[0]]))


# --- the phase model --------------------------------------------------------------------------


def _compatible(a: Behaviour, b: Behaviour) -> bool:
    """Instances in ``a`` and ``b`` may serve at once: each reads what the other writes."""

    def serves(writer: Behaviour, reader: Behaviour) -> bool:
        if reader.reads_from is ReadSource.CIPHERTEXT:
            return writer.writes_ciphertext
        return writer.writes_plaintext

    return serves(a, b) and serves(b, a)


def _coherent(b: Behaviour) -> bool:
    """What the behaviour table must never say about one phase."""
    modes = b.backfill_modes
    return all((
        not (b.writes_plaintext and not b.plaintext_column_exists),
        b.nulls_plaintext == (b.plaintext_column_exists and not b.writes_plaintext),
        b.reads_from is not ReadSource.CIPHERTEXT or b.writes_ciphertext,
        not b.fallback_to_plaintext
        or (b.reads_from is ReadSource.CIPHERTEXT and b.plaintext_column_exists),
        BackfillMode.ENCRYPT not in modes or (b.writes_ciphertext and b.writes_plaintext),
        BackfillMode.PURGE not in modes or (not b.writes_plaintext and b.plaintext_column_exists),
        BackfillMode.DECRYPT not in modes
        or (b.reads_from is ReadSource.CIPHERTEXT and b.writes_plaintext),
        b.requires_plaintext_complete == (b.reads_from is ReadSource.PLAINTEXT),
    ))  # fmt: skip


fact_overrides = st.fixed_dictionaries(
    {},
    optional={
        "rows_missing_ciphertext": st.integers(0, 3),
        "rows_ciphertext_without_plaintext": st.integers(0, 3),
        "rows_with_plaintext": st.integers(0, 3),
        "shadow_mismatches_since_switch": st.integers(0, 2),
        "fallbacks_since_switch": st.integers(0, 2),
        "schema_expanded": st.booleans(),
        "plaintext_columns_present": st.booleans(),
        "current_key_version": st.sampled_from([None, "v2", "v9"]),
        "last_verification": st.none(),
        "last_gate": st.none(),
        "instances": st.just(()),
    },
)
moves = st.lists(
    st.tuples(st.sampled_from(list(Phase)), st.booleans(), fact_overrides), max_size=40
)


@PROPERTY
@given(moves=moves)
def test_random_moves_never_reach_a_state_the_behaviour_table_forbids(
    moves: list[tuple[Phase, bool, dict[str, Any]]],
) -> None:
    assert all(_coherent(b) for b in BEHAVIOURS.values())
    phase = Phase.PLAINTEXT
    for target, force, overrides in moves:
        facts = replace(good_facts(phase), **overrides)
        try:
            classify_move(phase, target)
        except IllegalTransitionError:
            assert abs(target.index - phase.index) != 1  # only a step is ever legal
            with pytest.raises(IllegalTransitionError):
                evaluate(phase, target, facts)
            continue
        decision = evaluate(phase, target, facts)
        assert decision.allowed == all(g.passed for g in decision.guards)
        if not (decision.allowed or force):
            continue  # refused: the phase stays
        before, phase = BEHAVIOURS[phase], target
        after = BEHAVIOURS[phase]
        assert _coherent(after)
        assert _compatible(before, after)  # a fleet half-way through the move stays correct


def test_an_instant_python_cannot_hold_in_utc_is_a_clear_value_error() -> None:
    vt = value_type("timestamptz")
    early = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    with pytest.raises(ValueError, match="out of range"):
        vt.encode(early)
