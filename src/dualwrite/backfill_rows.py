"""What the backfiller does to one claimed batch, in Python (pure but for the cipher's RNG).

A batch arrives as rows ``(pk, *columns)`` laid out by
:func:`dualwrite.backfill_sql.select_columns`; :func:`transform` returns the arrays of the
batch's one set-based ``UPDATE`` (see :func:`dualwrite.backfill_sql.array_layout`), only for
rows that need a write, plus counts. Loops run per column over the whole batch (list
comprehensions, cached bound methods) so the per-row Python cost stays close to the AES cost.

>>> from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> spec = MigrationSpec("t_pii", "t", (FieldSpec("email", blind_index="email"),))
>>> codec = RowCodec(spec, FieldCipher(Keyring([DataKey("v1", bytes(32))])), BlindIndex(bytes(32)))
>>> out = transform(codec, "encrypt", [(7, "a@x.io", True, True), (8, None, False, False)])
>>> out.written, out.pks, [len(c) for c in out.arrays[0]]
(1, [7], [37])

Failures (a ciphertext that does not decrypt) are counted and reported by primary key only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dualwrite.crypto import BlindIndex, FieldCipher, row_key_of
from dualwrite.errors import DecryptionError
from dualwrite.phases import BackfillMode
from dualwrite.spec import MigrationSpec

Row = Sequence[Any]
_FAILED = object()


@dataclass(slots=True)
class BatchResult:
    """The arrays to write (for the rows in ``pks``) and what happened to the batch."""

    pks: list[Any]
    arrays: list[list[Any]]
    claimed: int = 0
    written: int = 0
    failed_pks: list[str] = field(default_factory=list)
    unchanged: int = 0  # matched the predicate but nothing can be written (e.g. no blind index)


@dataclass(frozen=True, slots=True)
class RowCodec:
    """The cipher, blind index and spec a transform needs."""

    spec: MigrationSpec
    cipher: FieldCipher
    bidx: BlindIndex | None


def _row_keys(rows: Sequence[Row]) -> list[str]:
    first = rows[0][0] if rows else None
    if isinstance(first, str) or first is None:
        return [row_key_of(r[0]) for r in rows]
    return [str(r[0]) for r in rows]  # UUID / int: str() is the canonical row key


def _safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(value: Any, **kw: Any) -> Any:
        try:
            return fn(value, **kw)
        except DecryptionError:
            return _FAILED

    return call


def transform(codec: RowCodec, mode: BackfillMode | str, rows: Sequence[Row]) -> BatchResult:
    """Compute the writes for ``rows`` claimed in ``mode``."""
    mode = BackfillMode.parse(mode)
    if mode is BackfillMode.ENCRYPT:
        per_field, failed = _encrypt(codec, rows), [False] * len(rows)
    elif mode is BackfillMode.DECRYPT:
        per_field, failed = _decrypt(codec, rows)
    elif mode is BackfillMode.REKEY:
        per_field, failed = _rekey(codec, rows)
    else:
        per_field, failed = _purge(codec, rows)
    width = len(per_field)
    keep = [
        i for i in range(len(rows))
        if not failed[i] and any(per_field[k][i] is not None for k in range(width))
    ]  # fmt: skip
    out = BatchResult(
        pks=[rows[i][0] for i in keep],
        arrays=[[col[i] for i in keep] for col in per_field],
        claimed=len(rows),
        written=len(keep),
    )
    out.failed_pks = [str(rows[i][0]) for i in range(len(rows)) if failed[i]]
    out.unchanged = len(rows) - len(keep) - len(out.failed_pks)
    return out


def _encrypt(codec: RowCodec, rows: Sequence[Row]) -> list[list[Any]]:
    """Per field: ciphertext where missing, blind index where missing (from the plaintext)."""
    enc_many, table, rks = codec.cipher.encrypt_many, codec.spec.table, _row_keys(rows)
    cols: list[list[Any]] = []
    for j, f in enumerate(codec.spec.fields):
        p, cm, bm = 1 + 3 * j, 2 + 3 * j, 3 + 3 * j
        todo = [(r[p] if r[cm] else None, rk) for r, rk in zip(rows, rks, strict=True)]
        cols.append(enc_many(todo, table=table, column=f.name))
        if f.blind_index:
            kind, compute = f.blind_index, _compute(codec)
            cols.append([compute(r[p], kind) if r[bm] else None for r in rows])
    return cols


def _compute(codec: RowCodec) -> Callable[[str | None, Any], bytes | None]:
    if codec.bidx is None:
        raise ValueError("a blind index key is needed for searchable fields")
    return codec.bidx.stored


def _decrypt(codec: RowCodec, rows: Sequence[Row]) -> tuple[list[list[Any]], list[bool]]:
    """Per field: the plaintext restored from the ciphertext where the plaintext is NULL."""
    dec, table, rks = _safe(codec.cipher.decrypt), codec.spec.table, _row_keys(rows)
    failed = [False] * len(rows)
    cols: list[list[Any]] = []
    for j, f in enumerate(codec.spec.fields):
        c, pm, name = 1 + 2 * j, 2 + 2 * j, f.name
        col = [
            dec(r[c], table=table, column=name, row_key=rk) if r[pm] and r[c] is not None else None
            for r, rk in zip(rows, rks, strict=True)
        ]
        for i, v in enumerate(col):
            if v is _FAILED:
                failed[i], col[i] = True, None
        cols.append(col)
    return cols, failed


def _rekey(codec: RowCodec, rows: Sequence[Row]) -> tuple[list[list[Any]], list[bool]]:
    """Per field: ciphertexts not under the current version, decrypted and encrypted again."""
    cipher, table, rks = codec.cipher, codec.spec.table, _row_keys(rows)
    dec, enc = _safe(cipher.decrypt), cipher.encrypt
    head = cipher.current_version.encode("ascii") + b":"
    n = len(head)
    failed = [False] * len(rows)
    cols: list[list[Any]] = []
    for j, f in enumerate(codec.spec.fields):
        c, name = 1 + j, f.name
        col: list[Any] = []
        for i, (r, rk) in enumerate(zip(rows, rks, strict=True)):
            ct = r[c]
            if ct is None or ct[:n] == head:
                col.append(None)
                continue
            value = dec(ct, table=table, column=name, row_key=rk)
            if value is _FAILED:
                failed[i] = True
                col.append(None)
            else:
                col.append(enc(value, table=table, column=name, row_key=rk))
        cols.append(col)
    return cols, failed


def _purge(codec: RowCodec, rows: Sequence[Row]) -> tuple[list[list[Any]], list[bool]]:
    """Per field: NULL the plaintext only where the ciphertext decrypts to it; where the
    ciphertext is missing, encrypt first (same statement). A ciphertext that does not decrypt,
    or decrypts to another value, is a failure: the row keeps its plaintext."""
    cipher, table, rks = codec.cipher, codec.spec.table, _row_keys(rows)
    dec, enc = _safe(cipher.decrypt), cipher.encrypt
    failed = [False] * len(rows)
    cols: list[list[Any]] = []
    for j, f in enumerate(codec.spec.fields):
        p, c, bm, name = 1 + 3 * j, 2 + 3 * j, 3 + 3 * j, f.name
        kind = f.blind_index
        compute = _compute(codec) if kind else None
        cs: list[Any] = []
        bs: list[Any] = []
        ns: list[Any] = []
        for i, (r, rk) in enumerate(zip(rows, rks, strict=True)):
            pt, ct = r[p], r[c]
            new_ct: Any = None
            if pt is None:
                cs.append(None), bs.append(None), ns.append(None)  # type: ignore[func-returns-value]
                continue
            if ct is None:
                new_ct = enc(pt, table=table, column=name, row_key=rk)
            elif dec(ct, table=table, column=name, row_key=rk) != pt:
                failed[i] = True
                cs.append(None), bs.append(None), ns.append(None)  # type: ignore[func-returns-value]
                continue
            cs.append(new_ct)
            bs.append(compute(pt, kind) if compute and (r[bm] or new_ct is not None) else None)
            ns.append(True)
        cols.append(cs)
        if kind:
            cols.append(bs)
        cols.append(ns)
    return cols, failed
