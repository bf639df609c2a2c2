"""The verifier's SQL and per-batch checks (see :mod:`dualwrite.verify`).

Checks run per field over a whole batch; a row is counted once per kind of problem (missing,
mismatched, undecryptable) however many of its fields have it. Only primary keys leave this
module, never a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dualwrite.crypto import BlindIndex, FieldCipher
from dualwrite.errors import DecryptionError
from dualwrite.spec import FieldSpec, MigrationSpec

if TYPE_CHECKING:
    from dualwrite.verify import VerificationReport


def _columns(spec: MigrationSpec, plaintext: bool) -> list[str]:
    cols: list[str] = []
    for f in spec.fields:
        if plaintext:
            cols.append(f.plaintext_column)
        cols.append(f.ciphertext_column)
        if f.bidx_column:
            cols.append(f.bidx_column)
    return cols


def scan_sql(
    spec: MigrationSpec, plaintext: bool, *, after: bool, sample_percent: float | None = None
) -> str:
    """Keyset batch (``$1`` = last key as text when ``after``, then the limit), or a sample."""
    pk, cols = spec.primary_key, ", ".join(_columns(spec, plaintext))
    if sample_percent is not None:
        return (
            f"SELECT {pk}, {cols} FROM {spec.table} TABLESAMPLE BERNOULLI ({sample_percent:.6f}) "
            "LIMIT $1"
        )
    where = f"WHERE {pk} > CAST($1 AS text)::{_PK_TYPE.get(spec.table, 'text')} " if after else ""
    limit = "$2" if after else "$1"
    return f"SELECT {pk}, {cols} FROM {spec.table} {where}ORDER BY {pk} LIMIT {limit}"


_PK_TYPE: dict[str, str] = {}


async def stored_types(raw: Any, spec: MigrationSpec) -> dict[str, str]:
    """SQL type of every ciphertext column (and remembers the primary key's type)."""
    rows = await raw.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE "
        "a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
        spec.table,
    )
    types = {r[0]: r[1] for r in rows}
    _PK_TYPE[spec.table] = types.get(spec.primary_key, "text")
    return {f.ciphertext_column: types.get(f.ciphertext_column, "absent") for f in spec.fields}


class RowChecker:
    """Classifies the fields of fetched rows (layout of :func:`scan_sql`)."""

    def __init__(
        self, spec: MigrationSpec, cipher: FieldCipher, bidx: BlindIndex | None, plaintext: bool
    ) -> None:
        self.spec, self.cipher, self.bidx, self.plaintext = spec, cipher, bidx, plaintext
        self.layout: list[tuple[FieldSpec, int | None, int, int | None]] = []
        i = 1
        for f in spec.fields:
            p = i if plaintext else None
            i += 1 if plaintext else 0
            c = i
            i += 1
            b = i if f.bidx_column else None
            i += 1 if f.bidx_column else 0
            self.layout.append((f, p, c, b))

    def check(self, rows: Sequence[Any], report: VerificationReport) -> list[int]:
        """Count problems into ``report``; return the indexes of rows with any problem."""
        n = len(rows)
        miss, mism, undec = [False] * n, [False] * n, [False] * n
        rks = [str(r[0]) for r in rows]
        dec, table, versions = self.cipher.decrypt, self.spec.table, report.versions
        compute = self.bidx.stored if self.bidx is not None else None
        for f, pi, ci, bi in self.layout:
            fc, name, kind = report.per_field[f.name], f.name, f.blind_index
            for i, r in enumerate(rows):
                ct, pt = r[ci], (r[pi] if pi is not None else None)
                if ct is None:
                    if pt is not None:
                        fc.values += 1
                        fc.missing += 1
                        miss[i] = True
                    continue
                fc.values += 1
                versions[ct[: ct.find(b":", 0, 9)].decode("ascii", "replace")] += 1
                try:
                    value = dec(ct, table=table, column=name, row_key=rks[i])
                except DecryptionError:
                    fc.undecryptable += 1
                    undec[i] = True
                    continue
                if pt is None:
                    continue
                if value != pt:
                    fc.mismatched += 1
                    mism[i] = True
                elif bi is not None and kind is not None:
                    stored = r[bi]
                    want = compute(pt, kind) if compute is not None else stored
                    if stored is None and (compute is None or want is not None):
                        fc.missing += 1
                        miss[i] = True
                    elif stored != want:
                        fc.mismatched += 1
                        mism[i] = True
        report.checked += n
        report.missing += sum(miss)
        report.mismatched += sum(mism)
        report.undecryptable += sum(undec)
        return [i for i in range(n) if miss[i] or mism[i] or undec[i]]


def repair_sql(spec: MigrationSpec) -> str:
    """Re-encrypt from the plaintext where every plaintext column still equals what was read."""
    pk = spec.primary_key
    pk_type = _PK_TYPE.get(spec.table, "text")
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
        raise ValueError("repair needs the blind index key for searchable fields")
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
    status = await raw.execute(repair_sql(spec), *arrays)
    fixed = int(status.split()[-1])
    return fixed, len(rows) - fixed
