"""A page's column of field ciphertexts opened in one call (what a bulk read runs per field).

:func:`column_opener` gives, for one ``table.column``, a callable
``open(cts, row_keys) -> list[str] | None`` (lists or tuples): every value of the column
decrypted, in order, or ``None`` as soon as one value is not the fast path's (a missing value,
another header, a version the keyring lacks, a failed tag, not UTF-8). On ``None`` the caller
opens the column value by value through :meth:`FieldCipher.decrypt`, which names the failure:
an opener never answers differently from it, only sooner.

Two implementations, same answers (the tests run both):

* **native** (:data:`NATIVE`): ``dualwrite.crypto._gcm``, a small C module against OpenSSL
  built at install time when a C compiler and OpenSSL's headers are present (see
  ``hatch_build.py``): one EVP context per key version for the whole column, no Python object
  per step. About a third of the Python path's time on a page of 100 clients.
* **python**: one comprehension per column over :meth:`FieldCipher.openers`.

``DUALWRITE_NO_NATIVE=1`` in the environment makes :data:`NATIVE` false (the Python path).

>>> from dualwrite.crypto import DataKey, FieldCipher, Keyring
>>> cipher = FieldCipher(Keyring([DataKey("v1", bytes(32))]))
>>> cts = [cipher.encrypt(f"x{i}", table="t", column="a", row_key=str(i)) for i in range(3)]
>>> keys = [b"0", b"1", b"2"]
>>> column_opener(cipher, "t", "a")(cts, keys)
['x0', 'x1', 'x2']
>>> column_opener(cipher, "t", "a", native=False)([cts[0], None], keys[:2]) is None
True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from dualwrite.crypto.cipher import FieldCipher

__all__ = ["NATIVE", "ColumnOpener", "column_opener"]

ColumnOpener = Callable[[Sequence[Any], Sequence[bytes]], "list[str] | None"]

_gcm: ModuleType | None
try:
    from dualwrite.crypto import _gcm  # type: ignore[attr-defined, no-redef, unused-ignore]
except ImportError:  # not built (no compiler or OpenSSL headers at install): the Python path
    _gcm = None

NATIVE: bool = _gcm is not None and not os.environ.get("DUALWRITE_NO_NATIVE")


class _Native:
    """The C opener bound to one column's keys (kept out of any ``repr``)."""

    __slots__ = ("_versions",)

    def __init__(self, versions: dict[int, tuple[bytes, tuple[Any, ...]]]) -> None:
        self._versions = versions

    def __call__(self, cts: Sequence[Any], row_keys: Sequence[bytes]) -> list[str] | None:
        assert _gcm is not None
        result: list[str] | None = _gcm.open_column(self._versions, cts, row_keys)
        return result

    def __repr__(self) -> str:
        return f"<native column opener, {len(self._versions)} key version(s)>"


class _Python:
    """The same, one comprehension per column."""

    __slots__ = ("_versions",)

    def __init__(self, versions: dict[int, tuple[Any, tuple[Any, ...]]]) -> None:
        self._versions = versions

    def __call__(self, cts: Sequence[Any], row_keys: Sequence[bytes]) -> list[str] | None:
        versions = self._versions
        try:  # a missing value (None) or an unknown version raises: the general path, then
            if len(versions) == 1:
                ((version, (open_, pres)),) = versions.items()
                texts = [
                    open_(ct[3:15], ct[15:], pres[len(rk)] + rk).decode()
                    for ct, rk in zip(cts, row_keys, strict=True)
                    if ct[1] == version and ct[0] == 118 and ct[2] == 58  # b"vN:"
                ]
            else:  # several key versions (a rotation, old keys kept): each value's own
                texts = [
                    (o := versions[ct[1]])[0](ct[3:15], ct[15:], o[1][len(rk)] + rk).decode()
                    for ct, rk in zip(cts, row_keys, strict=True)
                    if ct[0] == 118 and ct[2] == 58
                ]
        except Exception:  # the general path names the failure (and counts it)
            return None
        return texts if len(texts) == len(cts) else None  # another header: general path

    def __repr__(self) -> str:
        return f"<python column opener, {len(self._versions)} key version(s)>"


def column_opener(
    cipher: FieldCipher, table: str, column: str, *, native: bool | None = None
) -> ColumnOpener:
    """The column opener of ``table.column`` for the keys ``cipher`` holds (single-digit
    versions; a value of any other goes to the general path). ``native=None`` picks
    :data:`NATIVE`; ``True`` requires the built module (:class:`RuntimeError` without it)."""
    openers = cipher.openers(table, column)  # b"vN:" -> (AESGCM.decrypt, prefixes)
    if native is None:
        native = NATIVE
    if not native:
        return _Python({head[1]: v for head, v in openers.items()})
    if _gcm is None:
        raise RuntimeError("the native column opener (dualwrite.crypto._gcm) is not built")
    ring = cipher.keyring
    keys: dict[int, tuple[bytes, tuple[Any, ...]]] = {}
    for head, (_, pres) in openers.items():
        keys[head[1]] = (ring.get(head[:-1].decode()).reveal(), pres)
    return _Native(keys)
