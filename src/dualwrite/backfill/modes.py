"""One strategy per backfill mode: what it claims, how it transforms, what it writes (pure).

A :class:`Strategy` says everything about one mode in one place, so the claim's columns, the
Python transform and the ``UPDATE``'s SET clauses cannot disagree:

* :meth:`Strategy.predicate` -- which rows still need the mode (claim filter, "remaining" count);
* :meth:`Strategy.reads` -- per field, the SQL expressions the claim selects;
* :meth:`Strategy.writes` -- per field, the :class:`Output` columns of the batch's one
  ``UPDATE ... FROM unnest(...)`` (array type and SET expression);
* :meth:`Strategy.transform` -- per field, from the columns it read (column-wise, over the whole
  batch) to one array per output, plus which rows failed (a ciphertext that does not decrypt).

:func:`transform` runs a strategy over a claimed batch ``(pk, *reads of field 1, *reads of field
2, ...)`` and keeps only the rows that need a write:

>>> from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> spec = MigrationSpec("t_pii", "t", (FieldSpec("email", blind_index="email"),))
>>> codec = RowCodec(spec, FieldCipher(Keyring([DataKey("v1", bytes(32))])), BlindIndex(bytes(32)))
>>> rows = [(7, "a@x.io", True, True), (8, None, False, False)]
>>> out = transform(codec, strategy("encrypt"), rows)
>>> out.written, out.pks, [len(c) for c in out.arrays[0]]
(1, [7], [37])
>>> [o.assign for o in strategy("purge").writes(spec.field("email"))]
['COALESCE({v}, {t})', 'COALESCE({v}, {t})', 'CASE WHEN {v} THEN NULL ELSE {t} END']

Loops run per column over the whole batch (list comprehensions, cached bound methods) so the
per-row Python cost stays close to the AES cost. Failures are reported by primary key only.

Typed fields: :func:`transform` turns every plaintext column a strategy reads into canonical
text first (:meth:`dualwrite.crypto.values.ValueType.from_driver`), so strategies only ever see
text; plaintext written back is cast from text to the column's type in SQL. ``unique`` fields
also get ``<name>_uidx`` wherever their ciphertext is (re)made or it is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dualwrite.crypto import BlindIndex, FieldCipher, row_key_of
from dualwrite.errors import BlindIndexKeyMissingError, DecryptionError
from dualwrite.phases import BackfillMode
from dualwrite.schema import sql as schema_sql
from dualwrite.spec import FieldSpec, MigrationSpec
from dualwrite.spec import quote_ident as _q

__all__ = [
    "STRATEGIES",
    "BatchResult",
    "Decrypt",
    "Encrypt",
    "Output",
    "Purge",
    "Rekey",
    "RowCodec",
    "Strategy",
    "strategy",
    "transform",
]

Row = Sequence[Any]
Column = list[Any]
_FAILED = object()


@dataclass(frozen=True, slots=True)
class Output:
    """One array of the batch ``UPDATE``: the column it sets, the unnest alias suffix, the array
    element type, and the SET expression (``{v}`` = the array value, ``{t}`` = the stored one;
    a NULL element must leave the stored value as it is)."""

    column: str
    suffix: str
    sql_type: str
    assign: str = "COALESCE({v}, {t})"


@dataclass(frozen=True, slots=True)
class RowCodec:
    """The cipher, blind index and spec a transform needs."""

    spec: MigrationSpec
    cipher: FieldCipher
    bidx: BlindIndex | None

    def blind_index(self) -> BlindIndex:
        if self.bidx is None:
            raise BlindIndexKeyMissingError()
        return self.bidx

    def uidx_of(self, f: FieldSpec, text: str | None) -> bytes | None:
        """``<name>_uidx`` of a canonical text (``None`` for ``None``)."""
        if text is None:
            return None
        return self.blind_index().unique(f.value_type.equality_text(text))


@dataclass(slots=True)
class BatchResult:
    """The arrays to write (for the rows in ``pks``) and what happened to the batch."""

    pks: list[Any]
    arrays: list[list[Any]]
    claimed: int = 0
    written: int = 0
    failed_pks: list[str] = field(default_factory=list)
    unchanged: int = 0  # matched the predicate but nothing can be written (e.g. no blind index)

    def extend(self, other: BatchResult) -> None:
        """Append ``other`` (a later chunk of the same batch)."""
        self.pks += other.pks
        for mine, theirs in zip(self.arrays, other.arrays, strict=True):
            mine += theirs
        self.claimed += other.claimed
        self.written += other.written
        self.failed_pks += other.failed_pks
        self.unchanged += other.unchanged


def _is_null(column: str | None) -> str:
    return f"{_q(column)} IS NULL" if column else "NULL::boolean"


def _safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(value: Any, **kw: Any) -> Any:
        try:
            return fn(value, **kw)
        except DecryptionError:
            return _FAILED

    return call


def _failures(col: Column, failed: list[bool]) -> None:
    """Turn the ``_FAILED`` marks of ``col`` into ``failed`` flags (and NULLs)."""
    for i, v in enumerate(col):
        if v is _FAILED:
            failed[i], col[i] = True, None


class Strategy:
    """What one backfill mode does (see the module docstring). Subclasses fill in the parts."""

    mode: ClassVar[BackfillMode]
    keeps_ciphertext: ClassVar[bool] = False
    """Changes plaintext on purpose: the stale guard must keep the ciphertext."""
    needs_blind_index: ClassVar[bool] = False
    needs_plaintext_columns: ClassVar[bool] = True
    exact_predicate: ClassVar[bool] = True
    """Every row :meth:`predicate` matches needs a write (off: it may match rows that do not)."""

    def predicate(self, spec: MigrationSpec, current_version: str) -> str:
        raise NotImplementedError

    def reads(self, f: FieldSpec) -> tuple[str, ...]:
        raise NotImplementedError

    def writes(self, f: FieldSpec) -> tuple[Output, ...]:
        raise NotImplementedError

    def transform(
        self, codec: RowCodec, f: FieldSpec, cols: Sequence[Column], rks: list[str],
        failed: list[bool],
    ) -> list[Column]:  # fmt: skip
        """One array per :meth:`writes` entry; set ``failed[i]`` for rows that cannot convert."""
        raise NotImplementedError


class Encrypt(Strategy):
    """Ciphertext where missing, blind index where missing (from the plaintext)."""

    mode = BackfillMode.ENCRYPT
    needs_blind_index = True

    def predicate(self, spec: MigrationSpec, current_version: str) -> str:
        return schema_sql.missing_ciphertext_predicate(spec)

    def reads(self, f: FieldSpec) -> tuple[str, ...]:
        uidx = (_is_null(f.uidx_column),) if f.uidx_column else ()
        return (_q(f.plaintext_column), _is_null(f.ciphertext_column), _is_null(f.bidx_column),
                *uidx)  # fmt: skip

    def writes(self, f: FieldSpec) -> tuple[Output, ...]:
        out: tuple[Output, ...] = (Output(f.ciphertext_column, "c", "bytea"),)
        out += (Output(f.bidx_column, "b", "bytea"),) if f.bidx_column else ()
        return out + ((Output(f.uidx_column, "u", "bytea"),) if f.uidx_column else ())

    def transform(
        self, codec: RowCodec, f: FieldSpec, cols: Sequence[Column], rks: list[str],
        failed: list[bool],
    ) -> list[Column]:  # fmt: skip
        pts, ct_missing, bidx_missing, *uidx_missing = cols
        todo = [(p if m else None, rk) for p, m, rk in zip(pts, ct_missing, rks, strict=True)]
        out = [codec.cipher.encrypt_many(todo, table=codec.spec.aad_table, column=f.name)]
        if f.blind_index:
            kind, compute = f.blind_index, codec.blind_index().stored
            pairs = zip(pts, bidx_missing, strict=True)
            out.append([compute(p, kind) if m else None for p, m in pairs])
        if f.uidx_column:
            pairs = zip(pts, uidx_missing[0], strict=True)
            out.append([codec.uidx_of(f, p) if m else None for p, m in pairs])
        return out


class Decrypt(Strategy):
    """The plaintext set to the decrypted ciphertext wherever the two differ (DESIGN §5,
    "Rollback": the ciphertext is authoritative for the rows it covers), a NULL plaintext and a
    stale one alike; a row without ciphertext keeps its plaintext.

    Which plaintexts are stale only shows after decrypting, so the claim takes every row with a
    ciphertext (:attr:`exact_predicate` is off: the count over-states what is left, and a run
    ends after a pass from the start that had nothing to write).
    """

    mode = BackfillMode.DECRYPT
    keeps_ciphertext = True
    exact_predicate = False

    def predicate(self, spec: MigrationSpec, current_version: str) -> str:
        return schema_sql.ciphertext_present_predicate(spec)

    def reads(self, f: FieldSpec) -> tuple[str, ...]:
        return (_q(f.ciphertext_column), _q(f.plaintext_column))

    def writes(self, f: FieldSpec) -> tuple[Output, ...]:
        cast = "" if f.value_type.plain else f"::{f.value_type.array_type}"  # typed: from text
        return (Output(f.plaintext_column, "p", "text", "COALESCE({v}" + cast + ", {t})"),)

    def transform(
        self, codec: RowCodec, f: FieldSpec, cols: Sequence[Column], rks: list[str],
        failed: list[bool],
    ) -> list[Column]:  # fmt: skip
        cts, pts = cols
        dec, table, name = _safe(codec.cipher.decrypt), codec.spec.aad_table, f.name
        col = [
            dec(c, table=table, column=name, row_key=rk) if c is not None else None
            for c, rk in zip(cts, rks, strict=True)
        ]
        _failures(col, failed)
        return [[None if v == p else v for v, p in zip(col, pts, strict=True)]]


class Rekey(Strategy):
    """Ciphertexts not under the current version, decrypted and encrypted again."""

    mode = BackfillMode.REKEY
    needs_plaintext_columns = False

    def predicate(self, spec: MigrationSpec, current_version: str) -> str:
        return schema_sql.rekey_predicate(spec, current_version)

    def reads(self, f: FieldSpec) -> tuple[str, ...]:
        return (_q(f.ciphertext_column),)

    def writes(self, f: FieldSpec) -> tuple[Output, ...]:
        return (Output(f.ciphertext_column, "c", "bytea"),)

    def transform(
        self, codec: RowCodec, f: FieldSpec, cols: Sequence[Column], rks: list[str],
        failed: list[bool],
    ) -> list[Column]:  # fmt: skip
        cipher, table, name = codec.cipher, codec.spec.aad_table, f.name
        dec, enc = _safe(cipher.decrypt), cipher.encrypt
        head = cipher.current_version.encode("ascii") + b":"
        n = len(head)
        col: Column = []
        for i, (ct, rk) in enumerate(zip(cols[0], rks, strict=True)):
            if ct is None or ct[:n] == head:
                col.append(None)
                continue
            value = dec(ct, table=table, column=name, row_key=rk)
            if value is _FAILED:
                failed[i] = True
                col.append(None)
            else:
                col.append(enc(value, table=table, column=name, row_key=rk))
        return [col]


class Purge(Strategy):
    """NULL the plaintext only where the ciphertext decrypts to it; where the ciphertext is
    missing, encrypt first (same statement). A ciphertext that does not decrypt, or decrypts to
    another value, is a failure: the row keeps its plaintext."""

    mode = BackfillMode.PURGE
    keeps_ciphertext = True
    needs_blind_index = True

    def predicate(self, spec: MigrationSpec, current_version: str) -> str:
        return schema_sql.plaintext_remaining_predicate(spec)

    def reads(self, f: FieldSpec) -> tuple[str, ...]:
        uidx = (_is_null(f.uidx_column),) if f.uidx_column else ()
        return (_q(f.plaintext_column), _q(f.ciphertext_column), _is_null(f.bidx_column), *uidx)

    def writes(self, f: FieldSpec) -> tuple[Output, ...]:
        bidx = (Output(f.bidx_column, "b", "bytea"),) if f.bidx_column else ()
        uidx = (Output(f.uidx_column, "u", "bytea"),) if f.uidx_column else ()
        nulls = Output(f.plaintext_column, "n", "boolean", "CASE WHEN {v} THEN NULL ELSE {t} END")
        return (Output(f.ciphertext_column, "c", "bytea"), *bidx, *uidx, nulls)

    def transform(
        self, codec: RowCodec, f: FieldSpec, cols: Sequence[Column], rks: list[str],
        failed: list[bool],
    ) -> list[Column]:  # fmt: skip
        cipher, table, name, kind = codec.cipher, codec.spec.aad_table, f.name, f.blind_index
        dec, enc = _safe(cipher.decrypt), cipher.encrypt
        compute = codec.blind_index().stored if kind else None
        cs: Column = []
        bs: Column = []
        ns: Column = []
        us: Column = []  # unique fields: <name>_uidx where missing or the ciphertext is new
        uidx_missing = cols[3] if f.uidx_column else [False] * len(rks)
        for i, (pt, ct, bidx_missing, rk) in enumerate(zip(*cols[:3], rks, strict=True)):
            new_ct: Any = None
            ok = pt is not None
            if ok and ct is None:
                new_ct = enc(pt, table=table, column=name, row_key=rk)
            elif ok and dec(ct, table=table, column=name, row_key=rk) != pt:
                failed[i], ok = True, False
            if not ok:
                cs.append(None)
                bs.append(None)
                us.append(None)
                ns.append(None)
                continue
            cs.append(new_ct)
            wants_bidx = compute is not None and (bidx_missing or new_ct is not None)
            bs.append(compute(pt, kind) if wants_bidx and compute and kind else None)
            wants_uidx = uidx_missing[i] or new_ct is not None
            us.append(codec.uidx_of(f, pt) if f.uidx_column and wants_uidx else None)
            ns.append(True)
        return [cs, *([bs] if kind else []), *([us] if f.uidx_column else []), ns]


STRATEGIES: dict[BackfillMode, Strategy] = {
    s.mode: s for s in (Encrypt(), Decrypt(), Rekey(), Purge())
}


def strategy(mode: BackfillMode | str) -> Strategy:
    """The strategy of ``mode`` (a name is parsed; unknown -> ``ValueError``)."""
    return STRATEGIES[BackfillMode.parse(mode)]


def _row_keys(rows: Sequence[Row]) -> list[str]:
    first = rows[0][0] if rows else None
    if isinstance(first, str) or first is None:
        return [row_key_of(r[0]) for r in rows]
    return [str(r[0]) for r in rows]  # UUID / int: str() is the canonical row key


def transform(codec: RowCodec, how: Strategy, rows: Sequence[Row]) -> BatchResult:
    """Compute the writes for ``rows`` claimed by ``how`` (layout: pk, then each field's reads)."""
    rks = _row_keys(rows)
    failed = [False] * len(rows)
    arrays: list[Column] = []
    pos = 1
    for f in codec.spec.fields:
        reads = how.reads(f)
        width = len(reads)
        cols = [[r[pos + k] for r in rows] for k in range(width)]
        pos += width
        if not f.value_type.plain and _q(f.plaintext_column) in reads:  # typed: canonical text
            k, from_driver = reads.index(_q(f.plaintext_column)), f.value_type.from_driver
            cols[k] = [from_driver(v) for v in cols[k]]
        out = how.transform(codec, f, cols, rks, failed)
        if len(out) != len(how.writes(f)):  # a strategy bug, never data-dependent
            raise AssertionError(f"{how.mode} transform of {f.name} returned {len(out)} arrays")
        arrays += out
    keep = [
        i for i in range(len(rows))
        if not failed[i] and any(col[i] is not None for col in arrays)
    ]  # fmt: skip
    result = BatchResult(
        pks=[rows[i][0] for i in keep],
        arrays=[[col[i] for i in keep] for col in arrays],
        claimed=len(rows),
        written=len(keep),
    )
    result.failed_pks = [str(rows[i][0]) for i in range(len(rows)) if failed[i]]
    result.unchanged = len(rows) - len(keep) - len(result.failed_pks)
    return result
