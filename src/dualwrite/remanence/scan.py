"""The remanence scan: is the plaintext of sampled rows still anywhere in the table's files?

For up to ``sample`` rows with ciphertext, each field is decrypted **in memory** (nothing is
written anywhere) to its canonical text, with the table name frozen in the spec
(``aad_table``), and cut into needles (:mod:`~dualwrite.remanence.needles`: text types and
``jsonb`` strings; values PostgreSQL stores in binary form are counted, not searched). Every page of
the heap, its indexes, its TOAST table and TOAST index is then read through the best source
the role has (:mod:`~dualwrite.remanence.sources`) and searched raw, then for inline
compressed datums and reassembled TOAST values, decompressed (pglz in Python, lz4 with the
``lz4`` package) before searching (:mod:`~dualwrite.remanence.pages`).

>>> report = await scan(engine, CLIENTS_PII, cipher)                  # doctest: +SKIP
>>> report.residual_plaintext, report.passed                          # doctest: +SKIP
(0, True)

The report never prints a value; ``residual_plaintext`` is ``None`` when nothing could be
read (``not_scanned`` says why).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.crypto import FieldCipher, row_key_of
from dualwrite.db import connect_raw
from dualwrite.errors import DecryptionError
from dualwrite.remanence import pglz
from dualwrite.remanence.needles import Matcher, needles_for, texts_of
from dualwrite.remanence.pages import (
    LZ4,
    CompressedValue,
    ToastValues,
    compressed_datums,
    split_external,
    toast_chunks,
)
from dualwrite.remanence.report import NotScanned, ScanReport
from dualwrite.remanence.sources import PageSource, Relation, checkpoint, open_source, relations
from dualwrite.spec import MigrationSpec
from dualwrite.spec import quote_ident as _q

try:
    import lz4.block as _lz4
except ImportError:  # pragma: no cover - lz4 is a dependency; degrade to not_scanned
    _lz4 = None

__all__ = ["scan"]

DEFAULT_SAMPLE = 500


def _expand(value: CompressedValue, *, complete: bool) -> bytes | None:
    if value.method == LZ4:
        if _lz4 is None:
            return None
        try:
            return bytes(_lz4.decompress(value.payload, uncompressed_size=value.rawsize))
        except Exception:  # not an lz4 stream after all (or a partial one)
            return None
    try:
        return pglz.decompress(value.payload, value.rawsize, complete=complete)
    except pglz.PglzError:
        return None


async def _sample(
    conn: asyncpg.Connection,
    spec: MigrationSpec,
    cipher: FieldCipher,
    report: ScanReport,
    sample: int,
) -> dict[int, list[bytes]]:
    """Needles by value; counts rows sampled and values not searched into ``report``."""
    cts = [_q(f.ciphertext_column) for f in spec.fields]
    rows = await conn.fetch(
        f"SELECT {_q(spec.primary_key)}, {', '.join(cts)} FROM {spec.sql_table} "
        f"WHERE {' OR '.join(f'{c} IS NOT NULL' for c in cts)} ORDER BY random() LIMIT $1",
        sample,
    )  # fmt: skip
    needles: dict[int, list[bytes]] = {}
    for row in rows:
        key = row_key_of(row[0])
        for i, f in enumerate(spec.fields, start=1):
            if row[i] is None:
                continue
            try:  # the canonical text, bound to the frozen associated-data table name
                value = cipher.decrypt(bytes(row[i]), table=spec.aad_table, column=f.name,
                                       row_key=key)  # fmt: skip
            except DecryptionError:
                continue  # the verifier reports these; the scan searches what it can decrypt
            texts = texts_of(f.value_type, value or "")
            if texts is None:
                report.values_binary += 1
                continue
            found = [n for t in texts for n in needles_for(t)]
            if found:
                needles[len(needles)] = found
            else:
                report.values_too_short += 1
    report.rows_sampled = len(rows)
    return needles


class _Search:
    """Searches buffers for the needles; remembers which values were found, and where."""

    def __init__(self, matcher: Matcher, report: ScanReport) -> None:
        self.matcher, self.report = matcher, report
        self.places: dict[str, set[int]] = {}
        self.lz4_skipped = 0

    def _note(self, place: str, hits: set[int]) -> set[int]:
        if hits:
            self.places.setdefault(place, set()).update(hits)
        return hits

    def compressed(self, place: str, value: CompressedValue, *, complete: bool) -> set[int]:
        if value.method == LZ4 and _lz4 is None:
            self.lz4_skipped += 1
            return set()
        raw = _expand(value, complete=complete)
        if raw is None:
            return set()
        self.report.compressed_values_expanded += 1
        return self._note(f"{place} compressed", self.matcher.found(raw))

    async def relation(self, source: PageSource, rel: Relation) -> set[int]:
        hits: set[int] = set()
        place = rel.kind.split()[0] if rel.kind != "toast index" else "index"
        toast = ToastValues() if rel.kind == "toast" else None
        pages = 0
        async for page in source.pages(rel):
            pages += 1
            self.report.bytes_scanned += len(page)
            hits |= self._note(place, self.matcher.found(page))
            if toast is not None:
                toast.add(toast_chunks(page))
                continue
            for _off, rawsize, method, payload in compressed_datums(page):
                datum = CompressedValue(rawsize, method, payload)
                hits |= self.compressed(place, datum, complete=True)
        if toast is not None:
            for joined in toast.values():
                hits |= self._note(place, self.matcher.found(joined))
                external = split_external(joined)
                if external is not None:
                    hits |= self.compressed(place, external, complete=False)
        self.report.pages_scanned += pages
        self.report.relations.append(
            {"name": rel.name, "kind": rel.kind, "pages": pages, "hits": len(hits)}
        )
        return hits

    def summary(self) -> dict[str, int]:
        return {place: len(keys) for place, keys in sorted(self.places.items())}


async def scan(
    engine: AsyncEngine,
    spec: MigrationSpec,
    cipher: FieldCipher,
    *,
    sample: int = DEFAULT_SAMPLE,
    say: Callable[[str], None] | None = None,
) -> ScanReport:
    """Scan ``spec``'s table for the plaintext of up to ``sample`` rows (see module doc)."""
    started = time.perf_counter()
    report = ScanReport(spec.name, spec.table)
    conn = await connect_raw(engine)
    try:
        needles = await _sample(conn, spec, cipher, report, sample)
        report.values_searched = len(needles)
        rels = await relations(conn, spec.sql_table)
        if not needles:
            report.not_scanned.append(
                NotScanned(spec.table, "no row has a ciphertext to take the plaintext from")
            )
            return report
        source, _block, reasons = await open_source(conn, rels[0])
        if source is None:
            why = "; ".join(reasons)
            report.not_scanned += [NotScanned(f"{r.kind} {r.name}", why) for r in rels]
            return report
        report.method = source.method
        try:
            report.checkpoint = await checkpoint(conn) or "done"
            if report.checkpoint != "done" and source.method != "pageinspect":
                report.not_scanned.append(NotScanned("pages not yet written", report.checkpoint))
            search = _Search(Matcher(needles), report)
            found: set[int] = set()
            for rel in rels:
                if say:
                    say(f"scanning {rel.kind} {rel.name} ({rel.size:,} bytes)")
                found |= await search.relation(source, rel)
            if search.lz4_skipped:
                report.not_scanned.append(
                    NotScanned(
                        f"{search.lz4_skipped} lz4-compressed values",
                        "the lz4 package is not installed, so they were not decompressed",
                    )
                )
            report.residual_plaintext = len(found)
            report.found_in = search.summary()
        finally:
            await source.close()
        return report
    finally:
        report.seconds = time.perf_counter() - started
        await conn.close()
