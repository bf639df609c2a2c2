"""What a scan or a rewrite found, and what stays outside their reach (pure data).

``residual_plaintext`` is the number of sampled plaintext values found somewhere in the
table's files; it is ``None`` -- never 0 -- when nothing could be measured, and a scan passes
only with 0 *and* nothing left unscanned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["OUTSIDE_REACH", "NotScanned", "RewriteReport", "ScanReport"]

OUTSIDE_REACH: tuple[tuple[str, str], ...] = (
    (
        "WAL and its archive",
        "every write since the migration began is in the WAL (full-page images after each "
        "checkpoint, and the purge's old row images); expire archived WAL and base backups "
        "taken before the finalize by your retention policy",
    ),
    (
        "replication slots",
        "a slot retains WAL (and a physical slot with hot_standby_feedback holds back the "
        "rewrite); drop slots nobody consumes",
    ),
    (
        "physical replicas",
        "standbys replay the same WAL but keep their own files: run the rewrite's effect "
        "there by rebuilding them (or they get it from the primary's rewrite WAL) and scan them",
    ),
    (
        "logical replicas and CDC streams",
        "subscribers, Debezium/Kafka topics and their retention received the plaintext "
        "columns until the contract: purge them where they live",
    ),
    ("backups", "dumps and snapshots taken before the finalize hold the plaintext"),
    (
        "pg_statistic most-common-value lists",
        "ANALYZE stored sample values of the plaintext columns; DROP COLUMN removes the rows "
        "but pg_statistic's own dead tuples remain until it is vacuumed (VACUUM FULL "
        "pg_statistic as a superuser)",
    ),
    (
        "pg_stat_statements",
        "normalised statements hide literals, but queries with plaintext in identifiers or "
        "comments stay until pg_stat_statements_reset()",
    ),
    (
        "server logs",
        "log_statement, slow-query logs, auto_explain and error details -- including a "
        "fence refusal's 'Failing row contains (...)' -- may hold plaintext: rotate and "
        "delete them",
    ),
    (
        "the old relation files' disk blocks",
        "a rewrite unlinks the old files; the filesystem or SSD may keep their blocks until "
        "reused (encrypt the volume)",
    ),
)
"""What the scan cannot see or scrub, with what to do about each (also in the README)."""


@dataclass(frozen=True, slots=True)
class NotScanned:
    what: str
    reason: str


@dataclass
class ScanReport:
    migration: str
    table: str
    method: str | None = None
    residual_plaintext: int | None = None
    rows_sampled: int = 0
    values_searched: int = 0
    values_too_short: int = 0
    values_binary: int = 0
    """Sampled values of types stored in binary form (dates, numbers, ...): not searched."""
    pages_scanned: int = 0
    bytes_scanned: int = 0
    compressed_values_expanded: int = 0
    found_in: dict[str, int] = field(default_factory=dict)
    """Distinct sampled values found per place: ``heap``, ``heap compressed``, ``index``,
    ``toast``, ``toast compressed`` (counts only, never a value)."""
    relations: list[dict[str, Any]] = field(default_factory=list)
    not_scanned: list[NotScanned] = field(default_factory=list)
    checkpoint: str = "not needed"
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.residual_plaintext == 0 and not self.not_scanned

    @property
    def mb_per_second(self) -> float:
        return self.bytes_scanned / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["mb_per_second"] = round(self.mb_per_second, 2)
        out["outside_reach"] = [item for item, _ in OUTSIDE_REACH]
        return out

    def render(self) -> str:
        residual = "not measured" if self.residual_plaintext is None else self.residual_plaintext
        lines = [
            f"Remanence scan of {self.migration} (table {self.table}) via {self.method or '-'}",
            f"  residual plaintext:   {residual} of {self.values_searched} sampled values "
            f"({self.rows_sampled} rows; {self.values_too_short} too short to search, "
            f"{self.values_binary} stored in binary form)",
            f"  scanned:              {self.pages_scanned} pages, {self.bytes_scanned:,} bytes "
            f"in {self.seconds:.2f} s ({self.mb_per_second:.1f} MB/s); "
            f"{self.compressed_values_expanded} compressed values expanded",
            f"  checkpoint:           {self.checkpoint}",
        ]
        if self.found_in:
            where = ", ".join(f"{k} {v}" for k, v in sorted(self.found_in.items()))
            lines.append(f"  found in:             {where}")
        for rel in self.relations:
            lines.append(
                f"    {rel['kind']:<12} {rel['name']}: {rel['pages']} pages, {rel['hits']} found"
            )
        for miss in self.not_scanned:
            lines.append(f"  NOT SCANNED {miss.what}: {miss.reason}")
        lines.append("  outside this scan's reach (see the README checklist):")
        lines += [f"    - {item}" for item, _ in OUTSIDE_REACH]
        verdict = "PASS" if self.passed else ("FAIL" if self.residual_plaintext else "INCOMPLETE")
        lines.append(f"  result: {verdict}")
        return "\n".join(lines)


@dataclass
class RewriteReport:
    migration: str
    table: str
    status: str  # done | pending | skipped
    method: str | None = None
    lock_seconds: float | None = None
    seconds: float = 0.0
    size_before: int | None = None
    size_after: int | None = None
    reason: str = ""
    how: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        if self.status == "done":
            lock = (
                f"ACCESS EXCLUSIVE held {self.lock_seconds:.2f} s"
                if self.lock_seconds is not None
                else "online (brief locks at start and swap)"
            )
            return (
                f"rewrite of {self.table}: done with {self.method} in {self.seconds:.2f} s; "
                f"{lock}; {self.size_before:,} -> {self.size_after:,} bytes"
            )
        text = f"rewrite of {self.table}: {self.status.upper()}: {self.reason}"
        return text + (f"\n  to do it: {self.how}" if self.how else "")
