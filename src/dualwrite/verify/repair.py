"""``verify --repair``: rewrite the side that is not read from the side that is (compare-and-set).

Today the repair rebuilds ciphertext (and blind index) from the plaintext, with a
compare-and-set on every plaintext column read, so a row a live writer changed meanwhile is
left alone (counted as a conflict).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualwrite.errors import BlindIndexKeyMissingError
from dualwrite.spec import MigrationSpec
from dualwrite.verify.checks import RowChecker

__all__ = ["repair_rows", "repair_sql"]


def repair_sql(spec: MigrationSpec, pk_type: str) -> str:
    """Re-encrypt from the plaintext where every plaintext column still equals what was read."""
    pk = spec.primary_key
    aliases, arrays, sets, same = ["id"], [f"$1::{pk_type}[]"], [], []
    for f in spec.fields:
        for alias, typ in ((f"{f.name}_p", "text"), (f"{f.name}_c", "bytea")):
            aliases.append(alias)
            arrays.append(f"${len(arrays) + 1}::{typ}[]")
        sets.append(f"{f.ciphertext_column} = COALESCE(v.{f.name}_c, t.{f.ciphertext_column})")
        if f.bidx_column:
            aliases.append(f"{f.name}_b")
            arrays.append(f"${len(arrays) + 1}::bytea[]")
            sets.append(f"{f.bidx_column} = COALESCE(v.{f.name}_b, t.{f.bidx_column})")
        same.append(f"t.{f.plaintext_column} IS NOT DISTINCT FROM v.{f.name}_p")
    return (
        f"UPDATE {spec.table} AS t SET {', '.join(sets)} FROM unnest({', '.join(arrays)}) AS "
        f"v({', '.join(aliases)}) WHERE t.{pk} = v.id AND {' AND '.join(same)}"
    )


async def repair_rows(raw: Any, checker: RowChecker, rows: Sequence[Any]) -> tuple[int, int]:
    """Re-encrypt ``rows`` from their plaintext (compare-and-set); ``(repaired, conflicts)``."""
    spec, enc = checker.spec, checker.cipher.encrypt
    if checker.bidx is None and spec.searchable:
        raise BlindIndexKeyMissingError()
    arrays: list[list[Any]] = [[r[0] for r in rows]]
    rks = [str(r[0]) for r in rows]
    for f, pi, _ci, bi in checker.layout:
        assert pi is not None
        pts = [r[pi] for r in rows]
        arrays.append(pts)
        arrays.append(
            [
                enc(p, table=spec.table, column=f.name, row_key=rk)
                for p, rk in zip(pts, rks, strict=True)
            ]
        )
        if bi is not None and f.blind_index and checker.bidx is not None:
            kind, compute = f.blind_index, checker.bidx.stored
            arrays.append([compute(p, kind) for p in pts])
    status = await raw.execute(repair_sql(spec, checker.pk_type), *arrays)
    fixed = int(status.split()[-1])
    return fixed, len(rows) - fixed
