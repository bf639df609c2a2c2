"""The bulk read's decryption, one column at a time (what :meth:`FieldCodec.decode_rows` runs).

A page of ``n`` rows of ``k`` fields costs ``n * k`` AES-GCM opens, and as much again in the
interpreter when each field goes through the general per-row path (its branches: fallback,
version lookup, header check, value conversion). :func:`open_columns` takes a field's column of
the page at once in one comprehension, on the fast path of a column whose every value is a
ciphertext with a well-formed ``vN:`` header of a version the keyring holds. The header is
checked byte by byte: its digit selects the key and the associated data (a value whose digit
was altered does not authenticate), the other two bytes are checked as the general path does.

Anything else in a column (a missing ciphertext, a two-digit key version, a value that does
not open) leaves that whole column to the general path, which decides, counts and raises
exactly as for one row: the fast path never answers differently, it only answers sooner.

>>> from dualwrite.crypto import DataKey, FieldCipher, Keyring
>>> cipher = FieldCipher(Keyring([DataKey("v1", bytes(32))]))
>>> openers = {h[1]: v for h, v in cipher.openers("t", "a").items()}
>>> plan = (("a", None, 0, openers, None),)
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
    for i, (name, _pt_i, ct_i, versions, conv) in enumerate(plan):
        if ct_i is None:
            left.append(i)
            continue
        cts = [row[ct_i] for row in rows]
        try:  # a missing value (None) or an unknown version raises: the general path, then
            if len(versions) == 1:
                ((version, (open_, pres)),) = versions.items()
                texts = [
                    open_(ct[3:15], ct[15:], pres[len(rk)] + rk).decode()
                    for ct, rk in zip(cts, row_keys, strict=False)  # the same length
                    if ct[1] == version and ct[0] == 118 and ct[2] == 58  # b"vN:"
                ]
            else:  # several key versions (a rotation, old keys kept): each value's own
                texts = [
                    (o := versions[ct[1]])[0](ct[3:15], ct[15:], o[1][len(rk)] + rk).decode()
                    for ct, rk in zip(cts, row_keys, strict=False)
                    if ct[0] == 118 and ct[2] == 58
                ]
        except Exception:  # the general path names the failure (and counts it)
            left.append(i)
            continue
        if len(texts) != len(cts):  # another header: the general path refuses it
            left.append(i)
            continue
        values = texts if conv is None else [conv(t) for t in texts]
        for item, value in zip(items, values, strict=True):
            item[name] = value
    return left
