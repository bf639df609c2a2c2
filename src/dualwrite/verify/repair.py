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
from dualwrite.spec import quote_ident as _q
from dualwrite.verify.checks import RowChecker

__all__ = ["repair_rows", "repair_sql"]


def repair_sql(spec: MigrationSpec, pk_type: str) -> str:
    """Re-encrypt from the plaintext where every plaintext column still equals what was read."""
    pk = _q(spec.primary_key)
    aliases, arrays, sets, same = ["id"], [f"$1::{pk_type}[]"], [], []
    for f in spec.fields:
        for alias, typ in ((f"{f.name}_p", "text"), (f"{f.name}_c", "bytea")):
            aliases.append(alias)
            arrays.append(f"${len(arrays) + 1}::{typ}[]")
        ct = _q(f.ciphertext_column)
        sets.append(f"{ct} = COALESCE(v.{f.name}_c, t.{ct})")
        for col, suffix in ((f.bidx_column, "b"), (f.uidx_column, "u")):
            if col:
                aliases.append(f"{f.name}_{suffix}")
                arrays.append(f"${len(arrays) + 1}::bytea[]")
                sets.append(f"{_q(col)} = COALESCE(v.{f.name}_{suffix}, t.{_q(col)})")
        cast = "" if f.value_type.plain else f"::{f.value_type.array_type}"  # typed: from text
        same.append(f"t.{_q(f.plaintext_column)} IS NOT DISTINCT FROM v.{f.name}_p{cast}")
    return (
        f"UPDATE {spec.sql_table} AS t SET {', '.join(sets)} FROM unnest({', '.join(arrays)}) "
        f"AS v({', '.join(aliases)}) WHERE t.{pk} = v.id AND {' AND '.join(same)}"
    )


async def repair_rows(raw: Any, checker: RowChecker, rows: Sequence[Any]) -> tuple[int, int]:
    """Re-encrypt ``rows`` from their plaintext (compare-and-set); ``(repaired, conflicts)``."""
    spec, enc = checker.spec, checker.cipher.encrypt
    if checker.bidx is None and (spec.searchable or spec.unique_fields):
        raise BlindIndexKeyMissingError()
    arrays: list[list[Any]] = [[r[0] for r in rows]]
    rks = [str(r[0]) for r in rows]
    for f, pi, _ci, bi in checker.layout:
        assert pi is not None
        pts = [checker.plain_text(f, r[pi]) for r in rows]  # typed fields: canonical text
        arrays.append(pts)
        arrays.append(
            [
                enc(p, table=spec.aad_table, column=f.name, row_key=rk)
                for p, rk in zip(pts, rks, strict=True)
            ]
        )
        if bi is not None and f.blind_index and checker.bidx is not None:
            kind, compute = f.blind_index, checker.bidx.stored
            arrays.append([compute(p, kind) for p in pts])
        if f.uidx_column and checker.bidx is not None:
            equal, unique = f.value_type.equality_text, checker.bidx.unique
            arrays.append([None if p is None else unique(equal(p)) for p in pts])
    status = await raw.execute(repair_sql(spec, checker.pk_type), *arrays)
    fixed = int(status.split()[-1])
    return fixed, len(rows) - fixed
