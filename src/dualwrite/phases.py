"""The phases of a migration: what each one means, which moves exist, which guards apply (pure).

This module is THE one place that decides what a phase means. Other code asks it
(``behaviour(phase).reads_from``, ``backfill_mode_allowed(phase, mode)``, ``evaluate(...)``)
instead of comparing phase names. It does no I/O and never reads the clock: callers pass a
:class:`Facts` snapshot whose ``now`` is the time of the snapshot.

>>> b = behaviour("read_switch")
>>> b.reads_from, b.writes_plaintext, b.fallback_to_plaintext
(<ReadSource.CIPHERTEXT: 'ciphertext'>, True, True)
>>> next_phase(Phase.BACKFILL), previous_phase(Phase.PLAINTEXT)
(<Phase.READ_SWITCH: 'read_switch'>, None)

:class:`Facts`, the views, :class:`Decision` and the individual guards live in
:mod:`dualwrite.guards` (to keep each module short) and are re-exported here: import them from
``dualwrite.phases``. ``Decision.raise_if_refused()`` turns a refusal into ``GuardsFailedError``.

Choices made here (DESIGN.md §5 is silent on them):

* ``backfill`` allows the ``rekey`` mode besides ``encrypt``: re-keying only rewrites ciphertext,
  which nobody reads yet in that phase, so it is safe and lets a key rotation finish early.
* ``contract`` keeps ``fallback_to_plaintext``: its plaintext columns still exist, and a row whose
  ciphertext went missing (a legacy writer, caught by the stale-ciphertext trigger) is better
  served from plaintext (and counted) than as NULL. ``contract`` has no ``encrypt`` mode: purge
  encrypts a row before it NULLs its plaintext. It has no shadow compare: plaintext is being purged.
* ``finalized`` allows ``decrypt`` besides ``rekey``: rolling back ``finalized`` is the contract
  revision's Alembic downgrade (which re-adds nullable plaintext columns) followed by
  ``dualwrite backfill --mode decrypt``; the backfiller checks the columns exist.
* ``finalized -> contract`` is a legal backward move, guarded by ``plaintext_columns_present``
  (so: downgrade first). Every other move out of ``finalized`` is refused.
* Backward moves, like forward ones, go one step at a time. Their guards follow from the table
  (into a phase that keeps plaintext: ``plaintext_complete``; out of a phase without plaintext
  columns: ``plaintext_columns_present``; out of one that NULLs plaintext: every live instance
  observed it; out of one that writes plaintext: no live instance still runs a phase that does
  not, which is DESIGN's "re-checked once every instance has stopped writing NULL plaintext"):

  - ``finalized -> contract``: ``plaintext_columns_present``
  - ``contract -> read_switch``: ``plaintext_complete``, ``fleet_observed_contract``
  - ``read_switch -> backfill``, ``backfill -> dual_write``, ``dual_write -> plaintext``:
    ``plaintext_complete``, ``fleet_writes_plaintext``
* "Instance observed phase X" means its ``observed_version >= facts.state_version``: it has read
  this very state row version. A fleet guard passes when no instance is live.
* "After" is strict: a verification must finish after ``backfill_finished_at``, a latency gate
  after ``phase_changed_at``. Liveness is inclusive: ``now - last_seen <= 3 * poll_interval``.
* :meth:`Phase.parse` accepts any case and ``-`` for ``_``; :meth:`BackfillMode.parse` raises a
  plain :class:`ValueError` (not a ``DualwriteError``) for an unknown mode name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from dualwrite.errors import IllegalTransitionError, ModeNotAllowedError, UnknownPhaseError
from dualwrite.guards import (
    Decision,
    Facts,
    GateView,
    Guard,
    GuardResult,
    InstanceView,
    VerificationView,
    coverage_complete,
    fleet_guard,
    fleet_holds_current_key,
    fleet_observed,
    latency_gate_passed,
    live_instances,
    no_plaintext_fallbacks,
    no_shadow_mismatches,
    plaintext_columns_present,
    plaintext_complete,
    plaintext_purged,
    schema_expanded,
    soak_time,
    verification_passed,
)

__all__ = [
    "BEHAVIOURS",
    "BackfillMode",
    "Behaviour",
    "Decision",
    "Direction",
    "Facts",
    "GateView",
    "GuardResult",
    "InstanceView",
    "Phase",
    "ReadSource",
    "VerificationView",
    "backfill_mode_allowed",
    "behaviour",
    "classify_move",
    "evaluate",
    "live_instances",
    "next_phase",
    "previous_phase",
    "require_backfill_mode",
]


class Phase(StrEnum):
    """The six phases, in order.

    >>> Phase.parse("Read-Switch"), Phase.CONTRACT.index
    (<Phase.READ_SWITCH: 'read_switch'>, 4)
    >>> Phase.parse("encrypted")
    Traceback (most recent call last):
    ...
    dualwrite.errors.UnknownPhaseError: unknown phase 'encrypted': expected one of plaintext, \
dual_write, backfill, read_switch, contract, finalized
    """

    PLAINTEXT = "plaintext"
    DUAL_WRITE = "dual_write"
    BACKFILL = "backfill"
    READ_SWITCH = "read_switch"
    CONTRACT = "contract"
    FINALIZED = "finalized"

    @classmethod
    def parse(cls, name: str) -> Phase:
        """The phase named ``name`` (case-insensitive, ``-`` accepted for ``_``)."""
        wanted = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
        for phase in cls:
            if phase.value == wanted:
                return phase
        expected = ", ".join(p.value for p in cls)
        raise UnknownPhaseError(f"unknown phase {name!r}: expected one of {expected}")

    @property
    def index(self) -> int:  # type: ignore[override]  # shadows str.index on purpose
        """Position in the order, 0 (plaintext) to 5 (finalized)."""
        return _ORDER.index(self)


_ORDER: tuple[Phase, ...] = tuple(Phase)


class ReadSource(StrEnum):
    """Where the application reads a field from."""

    PLAINTEXT = "plaintext"
    CIPHERTEXT = "ciphertext"


class BackfillMode(StrEnum):
    """What a backfill run does (DESIGN §7).

    >>> BackfillMode.parse("REKEY")
    <BackfillMode.REKEY: 'rekey'>
    >>> BackfillMode.parse("shred")
    Traceback (most recent call last):
    ...
    ValueError: unknown backfill mode 'shred': expected one of encrypt, decrypt, rekey, purge
    """

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    REKEY = "rekey"
    PURGE = "purge"

    @classmethod
    def parse(cls, name: str) -> BackfillMode:
        """The mode named ``name`` (case-insensitive); a plain ``ValueError`` otherwise."""
        wanted = name.strip().lower() if isinstance(name, str) else None
        for mode in cls:
            if mode.value == wanted:
                return mode
        expected = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown backfill mode {name!r}: expected one of {expected}")


class Direction(StrEnum):
    FORWARD = "forward"
    BACKWARD = "backward"


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What one phase means for writes, reads and the backfiller (a row of DESIGN §5's table).

    >>> behaviour(Phase.CONTRACT).describe()["backfill_modes"]
    ['decrypt', 'rekey', 'purge']
    """

    phase: Phase
    writes_plaintext: bool  # the app writes real plaintext values
    nulls_plaintext: bool  # the app writes NULL into the (still existing) plaintext columns
    plaintext_column_exists: bool
    writes_ciphertext: bool
    reads_from: ReadSource
    shadow_compare: bool  # a sample of reads also checks the other source
    fallback_to_plaintext: bool  # missing ciphertext -> serve plaintext, counted
    backfill_modes: frozenset[BackfillMode]
    requires_plaintext_complete: bool  # reads or keeps plaintext: no ciphertext without it

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary (for the admin API); modes in their canonical order."""
        return {
            "phase": self.phase.value,
            "writes_plaintext": self.writes_plaintext,
            "nulls_plaintext": self.nulls_plaintext,
            "plaintext_column_exists": self.plaintext_column_exists,
            "writes_ciphertext": self.writes_ciphertext,
            "reads_from": self.reads_from.value,
            "shadow_compare": self.shadow_compare,
            "fallback_to_plaintext": self.fallback_to_plaintext,
            "backfill_modes": [m.value for m in BackfillMode if m in self.backfill_modes],
            "requires_plaintext_complete": self.requires_plaintext_complete,
        }


_M = BackfillMode


def _row(
    phase: Phase,
    *,
    writes_pt: bool,
    writes_ct: bool,
    reads: ReadSource,
    modes: frozenset[BackfillMode],
    shadow: bool = False,
    fallback: bool = False,
    pt_column: bool = True,
) -> tuple[Phase, Behaviour]:
    """One row of the table: a phase that keeps its plaintext column but no longer writes
    plaintext writes NULL into it; a phase requires complete plaintext iff it still writes it."""
    return phase, Behaviour(
        phase=phase,
        writes_plaintext=writes_pt,
        nulls_plaintext=pt_column and not writes_pt,
        plaintext_column_exists=pt_column,
        writes_ciphertext=writes_ct,
        reads_from=reads,
        shadow_compare=shadow,
        fallback_to_plaintext=fallback,
        backfill_modes=modes,
        requires_plaintext_complete=writes_pt,
    )


#: DESIGN §5's table, the single source of what a phase means.
BEHAVIOURS: Mapping[Phase, Behaviour] = MappingProxyType(
    dict(
        [
            _row(
                Phase.PLAINTEXT,
                writes_pt=True, writes_ct=False, reads=ReadSource.PLAINTEXT, modes=frozenset(),
            ),
            _row(
                Phase.DUAL_WRITE,
                writes_pt=True, writes_ct=True, reads=ReadSource.PLAINTEXT, modes=frozenset(),
            ),
            _row(
                Phase.BACKFILL,
                writes_pt=True, writes_ct=True, reads=ReadSource.PLAINTEXT, shadow=True,
                modes=frozenset({_M.ENCRYPT, _M.REKEY}),
            ),
            _row(
                Phase.READ_SWITCH,
                writes_pt=True, writes_ct=True, reads=ReadSource.CIPHERTEXT, shadow=True,
                fallback=True, modes=frozenset({_M.ENCRYPT, _M.REKEY}),
            ),
            _row(
                Phase.CONTRACT,
                writes_pt=False, writes_ct=True, reads=ReadSource.CIPHERTEXT, fallback=True,
                modes=frozenset({_M.PURGE, _M.DECRYPT, _M.REKEY}),
            ),
            _row(
                Phase.FINALIZED,
                writes_pt=False, writes_ct=True, reads=ReadSource.CIPHERTEXT, pt_column=False,
                modes=frozenset({_M.REKEY, _M.DECRYPT}),
            ),
        ]
    )
)  # fmt: skip


def behaviour(phase: Phase | str) -> Behaviour:
    """The :class:`Behaviour` of ``phase`` (a name is parsed; unknown -> ``UnknownPhaseError``)."""
    return BEHAVIOURS[Phase.parse(phase)]


def backfill_mode_allowed(phase: Phase | str, mode: BackfillMode | str) -> bool:
    """Whether the backfiller may run ``mode`` in ``phase``.

    >>> backfill_mode_allowed("backfill", "encrypt"), backfill_mode_allowed("backfill", "purge")
    (True, False)
    """
    return BackfillMode.parse(mode) in behaviour(phase).backfill_modes


def require_backfill_mode(phase: Phase | str, mode: BackfillMode | str) -> None:
    """Raise ``ModeNotAllowedError`` unless ``mode`` may run in ``phase``.

    >>> require_backfill_mode("backfill", "purge")
    Traceback (most recent call last):
    ...
    dualwrite.errors.ModeNotAllowedError: backfill mode 'purge' is not allowed in phase \
'backfill' (allowed: encrypt, rekey)
    """
    b, m = behaviour(phase), BackfillMode.parse(mode)
    if m not in b.backfill_modes:
        allowed = ", ".join(x.value for x in BackfillMode if x in b.backfill_modes) or "none"
        raise ModeNotAllowedError(
            f"backfill mode '{m}' is not allowed in phase '{b.phase}' (allowed: {allowed})"
        )


# --- transitions ------------------------------------------------------------------------------


def next_phase(phase: Phase | str) -> Phase | None:
    """The phase after ``phase``, or ``None`` after ``finalized``."""
    i = Phase.parse(phase).index
    return _ORDER[i + 1] if i + 1 < len(_ORDER) else None


def previous_phase(phase: Phase | str) -> Phase | None:
    """The phase before ``phase``, or ``None`` before ``plaintext``."""
    i = Phase.parse(phase).index
    return _ORDER[i - 1] if i > 0 else None


_FINALIZED_ROLLBACK = (
    "finalized is rolled back by the contract revision's Alembic downgrade, a move back to "
    "contract, then `dualwrite backfill --mode decrypt`"
)


def classify_move(current: Phase | str, target: Phase | str) -> Direction:
    """Whether ``current -> target`` is a legal forward or backward step; raise otherwise.

    >>> classify_move("plaintext", "dual_write"), classify_move("contract", "read_switch")
    (<Direction.FORWARD: 'forward'>, <Direction.BACKWARD: 'backward'>)
    >>> classify_move("plaintext", "backfill")
    Traceback (most recent call last):
    ...
    dualwrite.errors.IllegalTransitionError: cannot skip from plaintext to backfill: move one \
step at a time (next: dual_write)
    """
    cur, tgt = Phase.parse(current), Phase.parse(target)
    if cur is tgt:
        raise IllegalTransitionError(f"already in {cur}")
    if tgt.index == cur.index + 1:
        return Direction.FORWARD
    if tgt.index == cur.index - 1:
        return Direction.BACKWARD
    if tgt.index > cur.index:
        raise IllegalTransitionError(
            f"cannot skip from {cur} to {tgt}: move one step at a time (next: {next_phase(cur)})"
        )
    hint = _FINALIZED_ROLLBACK if cur is Phase.FINALIZED else "move back one step at a time"
    raise IllegalTransitionError(
        f"cannot skip back from {cur} to {tgt}: {hint} (previous: {previous_phase(cur)})"
    )


# --- guards per move --------------------------------------------------------------------------


def _fleet_writes_plaintext(facts: Facts) -> GuardResult:
    """``fleet_writes_plaintext``: no live instance still runs a phase that drops plaintext."""

    def problem(i: InstanceView) -> str | None:
        if i.observed_phase is None:
            return f"{i.label} has not observed any phase yet"
        if not BEHAVIOURS[i.observed_phase].writes_plaintext:
            return f"{i.label} still runs {i.observed_phase} and does not write plaintext"
        return None

    return fleet_guard("fleet_writes_plaintext", facts, problem)


_FORWARD: Mapping[Phase, tuple[Guard, ...]] = MappingProxyType(
    {
        Phase.PLAINTEXT: (schema_expanded, fleet_holds_current_key),
        Phase.DUAL_WRITE: (fleet_observed(Phase.DUAL_WRITE),),
        Phase.BACKFILL: (
            coverage_complete,
            verification_passed,
            latency_gate_passed(Phase.BACKFILL),
            fleet_observed(Phase.BACKFILL),
        ),
        Phase.READ_SWITCH: (
            fleet_observed(Phase.READ_SWITCH),
            soak_time,
            no_shadow_mismatches,
            no_plaintext_fallbacks,
            latency_gate_passed(Phase.READ_SWITCH),
        ),
        Phase.CONTRACT: (fleet_observed(Phase.CONTRACT), plaintext_purged),
    }
)


def _backward(current: Phase, target: Phase) -> tuple[Guard, ...]:
    """Guards of a backward move, derived from the behaviour table (see the module docstring)."""
    cur, tgt = BEHAVIOURS[current], BEHAVIOURS[target]
    guards: list[Guard] = []
    if not cur.plaintext_column_exists:
        guards.append(plaintext_columns_present)
    if tgt.requires_plaintext_complete:
        guards.append(plaintext_complete)
    if cur.nulls_plaintext:
        guards.append(fleet_observed(current))
    if cur.writes_plaintext:
        guards.append(_fleet_writes_plaintext)
    return tuple(guards)


def evaluate(current: Phase | str, target: Phase | str, facts: Facts) -> Decision:
    """Evaluate every guard of ``current -> target``; illegal moves raise.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2025, 1, 1, tzinfo=UTC)
    >>> facts = Facts(now=t, state_version=3, phase_changed_at=t, schema_expanded=False,
    ...               plaintext_columns_present=True, current_key_version="v1")
    >>> d = evaluate("plaintext", "dual_write", facts)
    >>> d.allowed, [(g.name, g.passed) for g in d.guards]
    (False, [('schema_expanded', False), ('fleet_holds_current_key', True)])
    >>> d.failures[0].reason
    'expand schema is missing: run `dualwrite db upgrade`'
    """
    cur, tgt = Phase.parse(current), Phase.parse(target)
    direction = classify_move(cur, tgt)
    checks = _FORWARD[cur] if direction is Direction.FORWARD else _backward(cur, tgt)
    return Decision(cur, tgt, direction, tuple(check(facts) for check in checks))
