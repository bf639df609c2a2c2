"""What the driver wrote and what it must find: the model of a chaos run and its final check.

Every write the driver attempts gets a sequence number and unique values (``F17``, ``e17@x.org``
...), so a value found in the table names the write that put it there. A write is

* **acknowledged** when its writer was told it committed (API 2xx, SQL ``COMMIT`` returned), or
  when its fate was unknown to the writer but the driver resolved it afterwards from the server
  (``txid_status`` of its transaction); then the row's expected value is the written one;
* **unacknowledged** when nobody can tell (an API instance killed mid-request, a connection lost
  before the answer): its row then accepts the value before *or* after it (``alternatives``) and
  takes no further writes; an unacknowledged create whose key never came back is a *ghost*: a
  row holding its values may exist, or not;
* **refused as expected** (the trigger refusing a key change that leaves ciphertexts behind,
  plaintext columns that do not exist in ``finalized``, the finalize fence): counted by reason,
  the model unchanged;
* anything else is a **failure** (an unexpected 5xx or SQL error, a 404 for a row that exists).

Rows are checked out by one writer at a time, so the order of acknowledgements of a row is the
order its writes committed in, and its last acknowledged value is the one to find.

>>> m = Model("ws")
>>> row = m.add_row("k1", {"first_name": "F1"}, "api")
>>> w = m.write("api_patch", row, {"first_name": "F2"}); m.ack(w)
>>> m.rows["k1"].values["first_name"], m.acknowledged
('F2', 1)
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clients_service.schema import CLIENTS_PII

FIELDS: tuple[str, ...] = tuple(CLIENTS_PII.field_names)


def values_for(
    seq: int, fields: Iterable[str], nulls: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Unique, valid values of write ``seq`` for ``fields`` (``nulls`` get ``None``)."""
    make = {
        "first_name": f"F{seq}",
        "last_name": f"L{seq}",
        "email": f"e{seq}@x.org",
        "phone": f"+1 555 {seq:07d}",
        "address": f"{seq} Chaos Street",
        "medical_history": f"note {seq}",
        "emergency_contact_name": f"C{seq}",
        "emergency_contact_phone": f"+44 20 {seq:07d}",
    }
    return {f: (None if f in nulls else make[f]) for f in fields}


@dataclass(eq=False)
class RowModel:
    key: str
    values: dict[str, Any]
    tags: set[str] = field(default_factory=set)
    alternatives: dict[str, set[Any]] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    frozen: bool = False  # an unacknowledged write may or may not have landed: no more writes
    keys: list[str] = field(default_factory=list)  # every key it had (primary-key changes)


@dataclass(eq=False)
class Write:
    seq: int
    kind: str
    row: RowModel | None  # None: a create whose row is not known yet
    changes: dict[str, Any]
    acked: bool = False


class Model:
    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self.rows: dict[str, RowModel] = {}
        self.ghosts: list[dict[str, Any]] = []
        self.writes: list[Write] = []
        self.attempted = 0
        self.acknowledged = 0
        self.expected_refusals: Counter[str] = Counter()
        self.retried_503 = 0
        self.failures: list[str] = []
        self.busy: set[str] = set()
        self._seq = itertools.count(1)
        self.phase = ""  # the phase the conductor last moved to (tags the writes)

    # --- bookkeeping ------------------------------------------------------------------------

    def next_seq(self) -> int:
        return next(self._seq)

    def add_row(self, key: str, values: Mapping[str, Any], kind: str) -> RowModel:
        full = {f: values.get(f) for f in FIELDS}
        row = RowModel(key, full, {kind}, keys=[key])
        self.rows[key] = row
        return row

    def write(self, kind: str, row: RowModel | None, changes: Mapping[str, Any]) -> Write:
        """Record an attempt (every attempt counts in ``attempted``)."""
        w = Write(self.next_seq(), kind, row, dict(changes))
        self.writes.append(w)
        self.attempted += 1
        return w

    def ack(self, w: Write, key: str | None = None, seen: str | None = None) -> None:
        """``w`` committed; for a create, ``key`` is the new row's key; ``seen``: the phase
        the database showed the writer (else the one the conductor last moved to)."""
        w.acked = True
        self.acknowledged += 1
        where = seen or self.phase
        tag = f"{w.kind}@{where}" if where else w.kind
        if w.row is None:
            assert key is not None
            w.row = self.add_row(key, w.changes, tag)
            for f in FIELDS:
                w.row.last_seq[f] = w.seq
            return
        w.row.tags.add(tag)
        for f, v in w.changes.items():
            w.row.values[f] = v
            w.row.last_seq[f] = w.seq
            w.row.alternatives.pop(f, None)

    def unknown(self, w: Write) -> None:
        """Nobody can tell whether ``w`` landed."""
        if w.row is None:
            self.ghosts.append(dict(w.changes))
            return
        w.row.tags.add(w.kind + "?")
        w.row.frozen = True
        for f, v in w.changes.items():
            w.row.alternatives.setdefault(f, set()).add(v)

    def rekey(self, row: RowModel, new_key: str) -> None:
        del self.rows[row.key]
        row.key = new_key
        row.keys.append(new_key)
        self.rows[new_key] = row

    def refused_as_expected(self, reason: str) -> None:
        self.expected_refusals[reason] += 1

    def fail(self, message: str) -> None:
        self.failures.append(message)

    # --- checking out rows --------------------------------------------------------------------

    def free_rows(self) -> list[RowModel]:
        return [r for k, r in self.rows.items() if k not in self.busy and not r.frozen]

    # --- the final check --------------------------------------------------------------------

    def check(
        self,
        read: Mapping[str, Mapping[str, Any]],
        unreadable: Mapping[str, str],
        sides: Mapping[str, Mapping[str, tuple[Any, Any]]],
    ) -> tuple[int, list[str]]:
        """(acknowledged writes found, violations).

        ``read``: key -> fields as the framework's read path returned them; ``unreadable``: key
        -> why a read failed; ``sides``: key -> field -> (plaintext, decrypted ciphertext or
        the exception name / ``None``), for every row of the workspace.
        """
        problems: list[str] = []
        for key, why in unreadable.items():
            row = self.rows.get(key)
            problems.append(f"row {key} cannot be read ({why}); {self._hint(row)}")
        for key, row in self.rows.items():
            if key in unreadable:
                continue
            got = read.get(key)
            if got is None:
                problems.append(f"row {key} is missing; {self._hint(row)}")
                continue
            for f in FIELDS:
                ok = {row.values[f], *row.alternatives.get(f, ())}
                if got.get(f) not in ok:
                    alt = row.alternatives.get(f)
                    other = f" or one of {sorted(map(str, alt))}" if alt else ""
                    problems.append(
                        f"row {key} field {f}: read {got.get(f)!r}, expected "
                        f"{row.values[f]!r}{other}; {self._hint(row)}"
                    )
        known = set(self.rows)
        for key, got in read.items():
            if key in known:
                continue
            if not any(all(got.get(f) == v for f, v in g.items()) for g in self.ghosts):
                problems.append(f"row {key} was never written by this run: {dict(got)!r}")
        for key, per_field in sides.items():
            for f, (plain, decrypted) in per_field.items():
                if isinstance(decrypted, str) and decrypted.startswith("!"):
                    problems.append(
                        f"row {key} field {f}: ciphertext does not decrypt under its row key "
                        f"({decrypted[1:]}); {self._hint(self.rows.get(key))}"
                    )
                elif plain is not None and decrypted is not None and plain != decrypted:
                    problems.append(
                        f"row {key} field {f}: plaintext {plain!r} and ciphertext {decrypted!r} "
                        f"disagree; {self._hint(self.rows.get(key))}"
                    )
        present = 0
        for w in self.writes:
            if not w.acked or w.row is None:
                continue
            got = read.get(w.row.key)
            if got is None:
                continue
            if all(
                w.row.last_seq.get(f, 0) > w.seq
                or got.get(f) == v
                or got.get(f) in w.row.alternatives.get(f, ())
                for f, v in w.changes.items()
            ):
                present += 1
        return present, problems

    @staticmethod
    def _hint(row: RowModel | None) -> str:
        if row is None:
            return "not a row of the model"
        keys = f", keys {row.keys}" if len(row.keys) > 1 else ""
        return f"written by {sorted(row.tags)}{keys}"
