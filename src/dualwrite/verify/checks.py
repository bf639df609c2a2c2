"""The verifier's scan SQL and per-batch checks (see :mod:`dualwrite.verify.scanner`).

Checks run per field over a whole batch; a row is counted once per kind of problem (missing,
mismatched, undecryptable) however many of its fields have it. Only primary keys leave this
module, never a value. Typed plaintext is compared as canonical text
(:meth:`dualwrite.crypto.values.ValueType.from_driver`); a ``unique`` field's ``_uidx`` is
checked like a blind index (present when the plaintext is, equal to the HMAC of its value).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dualwrite.crypto import BlindIndex, FieldCipher
from dualwrite.errors import DecryptionError
from dualwrite.spec import FieldSpec, MigrationSpec
from dualwrite.spec import quote_ident as _q

if TYPE_CHECKING:
    from dualwrite.verify import VerificationReport


def _columns(spec: MigrationSpec, plaintext: bool) -> list[str]:
    cols: list[str] = []
    for f in spec.fields:
        if plaintext:
            cols.append(_q(f.plaintext_column))
        cols.append(_q(f.ciphertext_column))
        if f.bidx_column:
            cols.append(_q(f.bidx_column))
    for f in spec.unique_fields:  # after every field's columns: the layout above stays put
        cols.append(_q(f.uidx_column or ""))
    return cols


def scan_sql(
    spec: MigrationSpec,
    plaintext: bool,
    pk_type: str,
    *,
    after: bool,
    sample_percent: float | None = None,
) -> str:
    """Keyset batch (``$1`` = last key as text when ``after``, then the limit), or a sample.

    ``pk_type`` is the primary key's SQL type (the keyset position travels as text)."""
    pk, cols, table = _q(spec.primary_key), ", ".join(_columns(spec, plaintext)), spec.sql_table
    if sample_percent is not None:
        return (
            f"SELECT {pk}, {cols} FROM {table} TABLESAMPLE BERNOULLI ({sample_percent:.6f}) "
            "LIMIT $1"
        )
    where = f"WHERE {pk} > CAST($1 AS text)::{pk_type} " if after else ""
    limit = "$2" if after else "$1"
    return f"SELECT {pk}, {cols} FROM {table} {where}ORDER BY {pk} LIMIT {limit}"


def ciphertext_types(spec: MigrationSpec, column_types: dict[str, str]) -> dict[str, str]:
    """SQL type of every ciphertext column (``absent`` when missing), from the table's types."""
    return {
        f.ciphertext_column: column_types.get(f.ciphertext_column, "absent") for f in spec.fields
    }


class RowChecker:
    """Classifies the fields of fetched rows (layout of :func:`scan_sql`)."""

    def __init__(
        self,
        spec: MigrationSpec,
        cipher: FieldCipher,
        bidx: BlindIndex | None,
        plaintext: bool,
        pk_type: str,
    ) -> None:
        self.spec, self.cipher, self.bidx, self.plaintext = spec, cipher, bidx, plaintext
        self.pk_type = pk_type
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
        self.uidx_at: dict[str, int] = {}  # unique fields: where their _uidx sits
        for f in spec.unique_fields:
            self.uidx_at[f.name] = i
            i += 1

    def plain_text(self, f: FieldSpec, value: Any) -> str | None:
        """The canonical text of a fetched plaintext value (typed fields; text as is)."""
        return value if f.value_type.plain else f.value_type.from_driver(value)

    def check(self, rows: Sequence[Any], report: VerificationReport) -> list[int]:
        """Count problems into ``report``; return the indexes of rows with any problem."""
        n = len(rows)
        miss, mism, undec = [False] * n, [False] * n, [False] * n
        rks = [str(r[0]) for r in rows]
        dec, table, versions = self.cipher.decrypt, self.spec.aad_table, report.versions
        compute = self.bidx.stored if self.bidx is not None else None
        for f, pi, ci, bi in self.layout:
            fc, name, kind = report.per_field[f.name], f.name, f.blind_index
            ux = self.uidx_at.get(f.name)
            for i, r in enumerate(rows):
                ct, pt = r[ci], (r[pi] if pi is not None else None)
                pt = self.plain_text(f, pt) if pt is not None else None
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
                    continue
                if ux is not None and self.bidx is not None:
                    want_u = self.bidx.unique(f.value_type.equality_text(pt))
                    if r[ux] is None or r[ux] != want_u:
                        fc.missing += r[ux] is None
                        fc.mismatched += r[ux] is not None
                        (miss if r[ux] is None else mism)[i] = True
                        continue
                if bi is not None and kind is not None:
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
