"""The verifier's report: counts per row and per field, keys of problem rows, never values."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_PROBLEM_KEYS", "FieldCounts", "VerificationReport"]

MAX_PROBLEM_KEYS = 100


@dataclass(slots=True)
class FieldCounts:
    values: int = 0  # ciphertexts or plaintexts present
    missing: int = 0
    mismatched: int = 0
    undecryptable: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"values": self.values, "missing": self.missing, "mismatched": self.mismatched,
                "undecryptable": self.undecryptable}  # fmt: skip


@dataclass(slots=True)
class VerificationReport:
    """Counts per row and per field; primary keys of problem rows only (never values)."""

    migration: str
    table: str
    phase: str
    full: bool
    checked: int = 0
    missing: int = 0  # rows with at least one missing ciphertext / blind index
    mismatched: int = 0  # rows with a ciphertext (or index) that disagrees with the plaintext
    undecryptable: int = 0  # rows with a ciphertext that does not decrypt
    per_field: dict[str, FieldCounts] = field(default_factory=dict)
    versions: Counter[str] = field(default_factory=Counter)
    column_types: dict[str, str] = field(default_factory=dict)
    plaintext_present: bool = True
    problem_keys: list[str] = field(default_factory=list)
    repaired: int = 0
    repair_conflicts: int = 0
    repair_direction: str | None = None  # "ciphertext from plaintext" / "plaintext from ..."
    repair_skipped: int = 0  # problem rows the direction has nothing to rebuild from
    seconds: float = 0.0

    @property
    def problems(self) -> int:
        return self.missing + self.mismatched + self.undecryptable

    @property
    def ok(self) -> bool:
        return self.problems == 0

    @property
    def binary(self) -> bool:
        return bool(self.column_types) and all(t == "bytea" for t in self.column_types.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration, "table": self.table, "phase": self.phase,
            "full": self.full, "checked": self.checked, "missing": self.missing,
            "mismatched": self.mismatched, "undecryptable": self.undecryptable,
            "problems": self.problems, "ok": self.ok, "binary": self.binary,
            "versions": dict(sorted(self.versions.items())),
            "plaintext_present": self.plaintext_present,
            "per_field": {k: v.as_dict() for k, v in self.per_field.items()},
            "problem_keys": self.problem_keys, "repaired": self.repaired,
            "repair_conflicts": self.repair_conflicts, "repair_direction": self.repair_direction,
            "repair_skipped": self.repair_skipped, "seconds": round(self.seconds, 3),
        }  # fmt: skip

    def render(self) -> str:
        """The printable report (like a migration guide's verification step); no values."""
        scan = "full scan" if self.full else "sample"
        bytea = sum(1 for t in self.column_types.values() if t == "bytea")
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.versions.items())) or "none"
        lines = [
            f"Verification of {self.migration} (table {self.table}), phase {self.phase}, {scan}",
            f"  rows checked:            {self.checked}",
            f"  stored as binary:        {'yes' if self.binary else 'NO'} "
            f"(bytea: {bytea} of {len(self.column_types)} ciphertext columns)",
            f"  key version prefixes:    {versions}",
            f"  decrypts:                {'yes' if self.undecryptable == 0 else 'NO'} "
            f"({self.undecryptable} undecryptable rows)",
            "  compared to plaintext:   "
            + ("yes" if self.plaintext_present else "no (plaintext columns are gone)"),
            f"  {'field':<26}{'values':>9}{'missing':>9}{'mismatched':>12}{'undecryptable':>15}",
        ]
        for name, c in self.per_field.items():
            lines.append(
                f"  {name:<26}{c.values:>9}{c.missing:>9}{c.mismatched:>12}{c.undecryptable:>15}"
            )
        if self.repair_direction is not None:
            lines.append(f"  repair:                  {self.repair_direction} (phase {self.phase} "
                         f"reads the {self.repair_direction.split()[-1]})")  # fmt: skip
            lines.append(f"  repaired rows:           {self.repaired} "
                         f"({self.repair_conflicts} changed meanwhile, left alone; "
                         f"{self.repair_skipped} with nothing to rebuild from)")  # fmt: skip
        if self.ok:
            lines.append("  result: OK (0 problems)")
        else:
            lines.append(
                f"  result: {self.problems} problems ({self.missing} missing, {self.mismatched} "
                f"mismatched, {self.undecryptable} undecryptable rows)"
            )
            lines.append("  primary keys (first): " + ", ".join(self.problem_keys[:20]))
        return "\n".join(lines)
