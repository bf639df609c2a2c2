"""The verifier: decrypt every ciphertext and compare it with its plaintext, without printing PII.

For each row and field (a full keyset scan, or a random sample) it checks: the ciphertext is
there when the plaintext is (and the blind index, for searchable fields), it decrypts, it
decrypts to the plaintext, and the blind index matches. The result is recorded in
``dualwrite_verifications`` (the ``backfill -> read_switch`` guard wants a full run after the
backfill finished, with 0 problems)::

    report = await verify(engine, CLIENTS_PII, cipher, bidx, full=True)
    print(report.render())
    # Verification of clients_pii (table clients), phase backfill, full scan
    #   rows checked:            200000
    #   stored as binary:        yes (bytea: 8 of 8 ciphertext columns)
    #   key version prefixes:    v1: 1600000
    #   decrypts:                yes (0 undecryptable)
    #   ...
    #   result: OK (0 problems)

``repair=True`` rebuilds, for the rows found missing, mismatched or undecryptable, the side the
phase does not read from the side it reads (DESIGN §5, "Repair direction";
:func:`~dualwrite.verify.repair.repair_direction`): up to ``backfill`` the ciphertext from the
plaintext (compare-and-set on every plaintext column read), from ``read_switch`` on the
plaintext from the ciphertext (compare-and-set on every ciphertext column read; refused once the
plaintext columns are gone). A row a live writer changed meanwhile is left alone and counted in
``repair_conflicts``; a row with nothing to rebuild from in ``repair_skipped``. The recorded
result is what the scan found; run the verifier again after a repair.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.crypto import BlindIndex, FieldCipher
from dualwrite.db import connect_raw
from dualwrite.errors import PhaseError
from dualwrite.metrics import Metrics
from dualwrite.schema import inspector
from dualwrite.spec import MigrationSpec
from dualwrite.state import registry, results
from dualwrite.verify.checks import RowChecker, ciphertext_types, scan_sql
from dualwrite.verify.repair import (
    RepairDirection,
    repair_direction,
    repair_plaintext_rows,
    repair_rows,
)
from dualwrite.verify.report import MAX_PROBLEM_KEYS, FieldCounts, VerificationReport

__all__ = ["verify"]


async def verify(
    engine: AsyncEngine,
    spec: MigrationSpec,
    cipher: FieldCipher,
    bidx: BlindIndex | None = None,
    *,
    full: bool = True,
    sample: int | None = None,
    repair: bool = False,
    batch_size: int = 5000,
    metrics: Metrics | None = None,
    record: bool = True,
) -> VerificationReport:
    """Check ``spec``'s table (``full`` keyset scan, or ``sample`` random rows); record it.

    Without ``bidx`` the blind indexes are checked for presence only, not recomputed.
    """
    if sample is not None:
        full = False
    started = time.monotonic()
    async with engine.connect() as conn:
        state = await registry.get_migration(conn, spec.name)
        plaintext = await inspector.plaintext_columns_present(conn, spec)
        started_at = await registry.database_now(conn)
        types = await inspector.column_types(conn, spec.sql_table)
    direction = repair_direction(state.phase)
    if repair and not plaintext:
        raise PhaseError(
            f"--repair rebuilds the {direction.value.split()[0]}, but the plaintext columns of "
            f"{spec.table} are gone in phase '{state.phase}': run the verifier without --repair"
        )
    report = VerificationReport(spec.name, spec.table, state.phase.value, full)
    report.repair_direction = direction.value if repair else None
    report.plaintext_present = plaintext
    report.per_field = {f.name: FieldCounts() for f in spec.fields}
    report.column_types = ciphertext_types(spec, types)
    checker = RowChecker(spec, cipher, bidx, plaintext, types.get(spec.primary_key, "text"))
    raw = await connect_raw(engine)
    try:
        if full:
            await _full_scan(raw, checker, report, batch_size, repair)
        else:
            await _sample(raw, checker, report, max(1, sample or 1000), repair)
    finally:
        await raw.close()
    report.seconds = time.monotonic() - started
    if metrics is not None:
        _export(metrics, report)
    if record:
        async with engine.begin() as conn:
            await results.record_verification(
                conn,
                results.VerificationRecord(
                    migration=spec.name, phase=state.phase, started_at=started_at, full=full,
                    checked=report.checked, missing=report.missing,
                    mismatched=report.mismatched, undecryptable=report.undecryptable,
                    per_field={k: v.as_dict() for k, v in report.per_field.items()},
                ),
            )  # fmt: skip
    return report


async def _full_scan(
    raw: Any, checker: RowChecker, report: VerificationReport, batch: int, repair: bool
) -> None:
    first = await raw.prepare(
        scan_sql(checker.spec, checker.plaintext, checker.pk_type, after=False)
    )
    after = await raw.prepare(
        scan_sql(checker.spec, checker.plaintext, checker.pk_type, after=True)
    )
    rows = await first.fetch(batch)
    while rows:
        # ask for the next batch before checking this one: the server works meanwhile
        nxt = asyncio.ensure_future(after.fetch(str(rows[-1][0]), batch))
        await asyncio.sleep(0)
        bad = _check(checker, report, rows)
        following = await nxt
        if repair and bad:
            await _repair(raw, checker, report, bad)
        rows = following


async def _sample(
    raw: Any, checker: RowChecker, report: VerificationReport, n: int, repair: bool
) -> None:
    spec = checker.spec
    estimate = await raw.fetchval(
        "SELECT greatest(reltuples, 1) FROM pg_class WHERE oid = to_regclass($1)", spec.sql_table
    )
    percent = min(100.0, 100.0 * 1.5 * n / max(float(estimate or 1), 1.0))
    sql = scan_sql(spec, checker.plaintext, checker.pk_type, after=False, sample_percent=percent)
    rows = await raw.fetch(sql, n)
    bad = _check(checker, report, rows)
    if repair and bad:
        await _repair(raw, checker, report, bad)


def _check(checker: RowChecker, report: VerificationReport, rows: Any) -> list[Any]:
    """Count the problems of ``rows``; return the rows that have any."""
    bad = [rows[i] for i in checker.check(rows, report)]
    room = MAX_PROBLEM_KEYS - len(report.problem_keys)
    if room > 0:
        report.problem_keys += [str(r[0]) for r in bad[:room]]
    return bad


async def _repair(raw: Any, checker: RowChecker, report: VerificationReport, bad: Any) -> None:
    skipped = 0
    if report.repair_direction == RepairDirection.PLAINTEXT_FROM_CIPHERTEXT:
        fixed, conflicts, skipped = await repair_plaintext_rows(raw, checker, bad)
    else:
        fixed, conflicts = await repair_rows(raw, checker, bad)
    report.repaired += fixed
    report.repair_conflicts += conflicts
    report.repair_skipped += skipped


def _export(metrics: Metrics, report: VerificationReport) -> None:
    metrics.verify_rows.labels(report.migration).inc(report.checked)
    for name, c in report.per_field.items():
        for kind in ("missing", "mismatched", "undecryptable"):
            n = getattr(c, kind)
            if n:
                metrics.verify_mismatches.labels(report.migration, name, kind).inc(n)
