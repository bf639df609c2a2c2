"""``verify --repair``: rewrite the side that is not read from the side that is (compare-and-set).

DESIGN §5, "Repair direction": while reads come from plaintext (up to ``backfill``) the
ciphertext (and blind index) is rebuilt from the plaintext, with a compare-and-set on every
plaintext column read; from ``read_switch`` on the plaintext (and blind index) is rebuilt from
the decrypted ciphertext, with a compare-and-set on every ciphertext column read. Either way a
row a live writer changed meanwhile is left alone (counted as a conflict), and the side users
read is never written.

>>> repair_direction("backfill"), repair_direction("read_switch")
(<RepairDirection.CIPHERTEXT_FROM_PLAINTEXT: 'ciphertext from plaintext'>, \
<RepairDirection.PLAINTEXT_FROM_CIPHERTEXT: 'plaintext from ciphertext'>)
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from dualwrite.errors import BlindIndexKeyMissingError, DecryptionError
from dualwrite.phases import Phase, ReadSource, behaviour
from dualwrite.schema.sql import keep_ciphertext_sql
from dualwrite.spec import MigrationSpec
from dualwrite.spec import quote_ident as _q
from dualwrite.verify.checks import RowChecker

__all__ = [
    "RepairDirection",
    "repair_direction",
    "repair_plaintext_rows",
    "repair_plaintext_sql",
    "repair_rows",
    "repair_sql",
]


class RepairDirection(StrEnum):
    """Which side ``--repair`` rebuilds, from which."""

    CIPHERTEXT_FROM_PLAINTEXT = "ciphertext from plaintext"
    PLAINTEXT_FROM_CIPHERTEXT = "plaintext from ciphertext"


def repair_direction(phase: Phase | str) -> RepairDirection:
    """Rebuild the side the phase does not read from the side it reads."""
    if behaviour(phase).reads_from is ReadSource.PLAINTEXT:
        return RepairDirection.CIPHERTEXT_FROM_PLAINTEXT
    return RepairDirection.PLAINTEXT_FROM_CIPHERTEXT


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


def repair_plaintext_sql(spec: MigrationSpec, pk_type: str) -> str:
    """Set plaintext (and blind index) from the decrypted ciphertext where every ciphertext
    column still equals what was read; a NULL element leaves the stored value."""
    pk = _q(spec.primary_key)
    aliases, arrays, sets, same = ["id"], [f"$1::{pk_type}[]"], [], []

    def add(alias: str, typ: str) -> None:
        aliases.append(alias)
        arrays.append(f"${len(arrays) + 1}::{typ}[]")

    for f in spec.fields:
        add(f"{f.name}_c", "bytea")
        add(f"{f.name}_p", "text")
        pt = _q(f.plaintext_column)
        cast = "" if f.value_type.plain else f"::{f.value_type.array_type}"  # typed: from text
        sets.append(f"{pt} = COALESCE(v.{f.name}_p{cast}, t.{pt})")
        for col, suffix in ((f.bidx_column, "b"), (f.uidx_column, "u")):
            if col:
                add(f"{f.name}_{suffix}", "bytea")
                sets.append(f"{_q(col)} = COALESCE(v.{f.name}_{suffix}, t.{_q(col)})")
        same.append(f"t.{_q(f.ciphertext_column)} IS NOT DISTINCT FROM v.{f.name}_c")
    return (
        f"UPDATE {spec.sql_table} AS t SET {', '.join(sets)} FROM unnest({', '.join(arrays)}) "
        f"AS v({', '.join(aliases)}) WHERE t.{pk} = v.id AND {' AND '.join(same)}"
    )


async def repair_plaintext_rows(
    raw: Any, checker: RowChecker, rows: Sequence[Any]
) -> tuple[int, int, int]:
    """Rebuild the plaintext of ``rows`` from their ciphertext (compare-and-set on every
    ciphertext), marked so the stale guard keeps the ciphertext; ``(repaired, conflicts,
    skipped)`` -- skipped rows have nothing to rebuild from (no ciphertext that decrypts and
    disagrees with what is stored)."""
    spec, dec, bidx = checker.spec, checker.cipher.decrypt, checker.bidx
    keep: list[Any] = []
    cols: list[list[Any]] = []
    for r in rows:
        rk, out, useful = str(r[0]), [], False
        for f, pi, ci, bi in checker.layout:
            ct = r[ci]
            pt = checker.plain_text(f, r[pi]) if pi is not None and r[pi] is not None else None
            try:
                value = dec(ct, table=spec.aad_table, column=f.name, row_key=rk)
            except DecryptionError:
                value = None
            new_pt = value if value is not None and value != pt else None
            out += [ct, new_pt]
            if bi is not None:
                want = bidx.stored(value, f.blind_index) if bidx and f.blind_index else None
                new_b = want if value is not None and want is not None and r[bi] != want else None
                out.append(new_b)
                useful |= new_b is not None
            if f.uidx_column:
                ux = checker.uidx_at[f.name]
                want = None
                if bidx is not None and value is not None:
                    want = bidx.unique(f.value_type.equality_text(value))
                out.append(want if want is not None and r[ux] != want else None)
                useful |= out[-1] is not None
            useful |= new_pt is not None
        if useful:
            keep.append(r[0])
            cols.append(out)
    if not keep:
        return 0, 0, len(rows)
    arrays: list[list[Any]] = [keep, *(list(c) for c in zip(*cols, strict=True))]
    async with raw.transaction():
        await raw.execute(keep_ciphertext_sql())
        status = await raw.execute(repair_plaintext_sql(spec, checker.pk_type), *arrays)
    fixed = int(status.split()[-1])
    return fixed, len(keep) - fixed, len(rows) - len(keep)
