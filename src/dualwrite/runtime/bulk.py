"""The bulk read's decryption, one column at a time (what :meth:`FieldCodec.decode_rows` runs).

A page of ``n`` rows of ``k`` fields costs ``n * k`` AES-GCM opens, and as much again in the
interpreter when each field goes through the general per-row path (its branches: fallback,
version lookup, header check, value conversion). :func:`open_columns` hands each field's column
of the page at once to the plan's column opener (:func:`dualwrite.crypto.columns.column_opener`,
native when built): its fast path takes a column whose every value is a ciphertext with a
well-formed ``vN:`` header of a version the keyring holds (the digit selects the key and the
associated data: a value whose digit was altered does not authenticate).

Anything else in a column (a missing ciphertext, a two-digit key version, a value that does
not open) leaves that whole column to the general path, which decides, counts and raises
exactly as for one row: the fast path never answers differently, it only answers sooner.

>>> from dualwrite.crypto import DataKey, FieldCipher, Keyring
>>> from dualwrite.crypto.columns import column_opener
>>> cipher = FieldCipher(Keyring([DataKey("v1", bytes(32))]))
>>> plan = (("a", None, 0, None, None, column_opener(cipher, "t", "a")),)
>>> rows = [(cipher.encrypt(f"x{i}", table="t", column="a", row_key=str(i)),) for i in range(3)]
>>> items = [{}, {}, {}]
>>> open_columns(items, rows, [b"0", b"1", b"2"], plan), items
([], [{'a': 'x0'}, {'a': 'x1'}, {'a': 'x2'}])
>>> open_columns([{}, {}], [rows[0], (None,)], [b"0", b"1"], plan)  # a fallback: general path
[0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["open_columns"]


def open_columns(
    items: list[dict[str, Any]],
    rows: Sequence[Sequence[Any]],
    row_keys: Sequence[bytes],
    plan: Sequence[tuple[Any, ...]],
) -> list[int]:
    """Decrypt each planned field of ``rows`` into ``items`` (one dict per row) where the
    whole column takes the fast path; returns the indexes in ``plan`` of the fields left to
    the caller's general path (their ``items`` entries untouched)."""
    left: list[int] = []
    keys = row_keys if isinstance(row_keys, list | tuple) else list(row_keys)
    by_column = list(zip(*rows, strict=True)) if rows else []  # one pass over the rows
    for i, (name, _pt_i, ct_i, _versions, conv, open_column) in enumerate(plan):
        if ct_i is None:
            left.append(i)
            continue
        texts = open_column(by_column[ct_i], keys) if by_column else []
        if texts is None:  # the general path decides, names the failure and counts it
            left.append(i)
            continue
        values = texts if conv is None else [conv(t) for t in texts]
        for item, value in zip(items, values, strict=True):
            item[name] = value
    return left
