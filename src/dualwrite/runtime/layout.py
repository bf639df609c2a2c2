"""Which columns a phase's read selects, and where each field sits in a fetched row (pure).

Split from :mod:`dualwrite.runtime.codec` (which re-exports :func:`read_columns` and
:class:`ReadLayout`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dualwrite.crypto import BlindIndex, FieldCipher
from dualwrite.crypto.columns import column_opener
from dualwrite.crypto.values import ValueType
from dualwrite.phases import Behaviour, ReadSource
from dualwrite.spec import FieldSpec, MigrationSpec

__all__ = ["ReadLayout", "open_plan", "read_columns", "seal_plan"]


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    plaintext: str
    ciphertext: str
    bidx: str | None
    kind: Any  # "email" | "phone" | "text" | "exact" | None
    vt: ValueType  # typed fields: value <-> canonical text
    uidx: str | None = None  # unique fields: <name>_uidx

    @classmethod
    def of(cls, f: FieldSpec) -> _Field:
        return cls(
            f.name, f.plaintext_column, f.ciphertext_column, f.bidx_column, f.blind_index,
            f.value_type, f.uidx_column,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReadLayout:
    """Where each field's plaintext/ciphertext sits in a fetched row tuple, for one phase."""

    behaviour: Behaviour
    slots: tuple[tuple[_Field, int | None, int | None], ...]  # (field, plaintext idx, ct idx)
    # the codec's decrypt plan for these slots (built with the layout; not part of equality)
    plan: tuple[tuple[Any, ...], ...] | None = field(default=None, compare=False, repr=False)
    sampled: bool = False  # a statement drawn for the shadow compare: compare every row


def seal_plan(
    cipher: FieldCipher, table: str, fields: Mapping[str, _Field], index: BlindIndex | None
) -> dict[str, tuple[Any, ...]]:
    """Per field name: ``(plaintext col, ciphertext col, head, seal, pres, text_of, limit,
    blind-index col, blind-index fn or None, kind, unique col)``, what the codec's write path
    inlines (see :meth:`FieldCipher.sealer`); ``limit`` is :attr:`ValueType.own_text_limit`."""
    return {
        name: (
            f.plaintext, f.ciphertext, *cipher.sealer(table, name), f.vt.text_of,
            f.vt.own_text_limit, f.bidx,
            index.stored if (f.bidx is not None and index is not None) else None, f.kind, f.uidx,
        )
        for name, f in fields.items()
    }  # fmt: skip


def open_plan(
    cipher: FieldCipher,
    table: str,
    slots: Sequence[tuple[_Field, int | None, int | None]],
    *,
    columns: bool = True,
) -> tuple[tuple[Any, ...], ...]:
    """Per slot: ``(name, plaintext idx, ciphertext idx, openers, value_of or None, column
    opener)``, what the codec's read path inlines (see :meth:`FieldCipher.openers`). The
    openers are keyed by the version digit's byte (``ct[1]``, an int: no slice to build and
    hash per field); the caller checks ``ct[0] == ord("v")`` and ``ct[2] == ord(":")``. The
    column opener (:func:`~dualwrite.crypto.columns.column_opener`) opens a page's column;
    ``columns=False`` leaves it ``None`` (a plan for one row only, built per call)."""
    return tuple(
        (f.name, pt_i, ct_i, {head[1]: v for head, v in cipher.openers(table, f.name).items()},
         None if f.vt.reads_as_text else f.vt.value_of,
         column_opener(cipher, table, f.name) if columns else None)
        for f, pt_i, ct_i in slots
    )  # fmt: skip


def subset(
    layout: ReadLayout, fields: Iterable[str], cipher: FieldCipher | None, table: str
) -> ReadLayout:
    """``layout`` narrowed to the slots of ``fields`` (its plan built again for them)."""
    wanted = set(fields)
    slots = tuple(s for s in layout.slots if s[0].name in wanted)
    plan = open_plan(cipher, table, slots) if cipher else None
    return ReadLayout(layout.behaviour, slots, plan, layout.sampled)


def read_columns(spec: MigrationSpec, behaviour: Behaviour) -> tuple[str, ...]:
    """The encrypted-field columns a read in this phase selects, in a fixed order.

    Plaintext when the phase reads it, shadow-compares against it or may fall back to it (and
    the column exists); ciphertext when the phase reads or shadow-compares it.

    >>> from dualwrite.phases import behaviour
    >>> from dualwrite.spec import FieldSpec, MigrationSpec
    >>> spec = MigrationSpec("t_pii", "t", (FieldSpec("a"),))
    >>> [read_columns(spec, behaviour(p)) for p in ("dual_write", "backfill", "finalized")]
    [('a',), ('a', 'a_encrypted'), ('a_encrypted',)]
    """
    b = behaviour
    want_pt = b.plaintext_column_exists and (
        b.reads_from is ReadSource.PLAINTEXT or b.shadow_compare or b.fallback_to_plaintext
    )
    want_ct = b.reads_from is ReadSource.CIPHERTEXT or b.shadow_compare
    out: list[str] = []
    for f in spec.fields:
        if want_pt:
            out.append(f.plaintext_column)
        if want_ct:
            out.append(f.ciphertext_column)
    return tuple(out)
