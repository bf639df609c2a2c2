"""Which guards each move needs, and their evaluation (pure): deciding, never doing.

Forward moves have a fixed list per phase (:data:`FORWARD_GUARDS`); backward moves derive theirs
from the behaviour table (see :mod:`dualwrite.phases` for the rules).

>>> from datetime import UTC, datetime
>>> t = datetime(2025, 1, 1, tzinfo=UTC)
>>> facts = Facts(now=t, state_version=3, phase_changed_at=t, schema_expanded=False,
...               plaintext_columns_present=True, current_key_version="v1")
>>> d = evaluate("plaintext", "dual_write", facts)
>>> d.allowed, [(g.name, g.passed) for g in d.guards]
(False, [('schema_expanded', False), ('guard_trigger_enabled', False), \
('fleet_holds_current_key', True)])
>>> d.failures[0].reason
'expand schema is missing: run `dualwrite db upgrade`'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dualwrite.phases.facts import Facts, InstanceView
from dualwrite.phases.guards import (
    Decision,
    Guard,
    GuardResult,
    blind_indexes_built,
    coverage_complete,
    fleet_guard,
    fleet_holds_current_key,
    fleet_observed,
    guard_trigger_enabled,
    latency_gate_passed,
    no_plaintext_fallbacks,
    no_shadow_mismatches,
    plaintext_columns_present,
    plaintext_complete,
    plaintext_purged,
    plaintext_verified,
    schema_expanded,
    soak_time,
    verification_passed,
)
from dualwrite.phases.model import BEHAVIOURS, Direction, Phase, ReadSource, classify_move

__all__ = ["FORWARD_GUARDS", "evaluate", "guards_for"]


def _fleet_writes_plaintext(facts: Facts) -> GuardResult:
    """``fleet_writes_plaintext``: no live instance still runs a phase that drops plaintext."""

    def problem(i: InstanceView) -> str | None:
        if i.observed_phase is None:
            return f"{i.label} has not observed any phase yet"
        if not BEHAVIOURS[i.observed_phase].writes_plaintext:
            return f"{i.label} still runs {i.observed_phase} and does not write plaintext"
        return None

    return fleet_guard("fleet_writes_plaintext", facts, problem)


FORWARD_GUARDS: Mapping[Phase, tuple[Guard, ...]] = MappingProxyType(
    {
        Phase.PLAINTEXT: (schema_expanded, guard_trigger_enabled, fleet_holds_current_key),
        Phase.DUAL_WRITE: (guard_trigger_enabled, fleet_observed(Phase.DUAL_WRITE)),
        Phase.BACKFILL: (
            guard_trigger_enabled,
            coverage_complete,
            verification_passed,
            blind_indexes_built,
            latency_gate_passed(Phase.BACKFILL),
            fleet_observed(Phase.BACKFILL),
        ),
        Phase.READ_SWITCH: (
            schema_expanded,  # includes the unique fields' valid UNIQUE indexes
            guard_trigger_enabled,
            fleet_observed(Phase.READ_SWITCH),
            soak_time,
            no_shadow_mismatches,
            no_plaintext_fallbacks,
            latency_gate_passed(Phase.READ_SWITCH),
        ),
        Phase.CONTRACT: (guard_trigger_enabled, fleet_observed(Phase.CONTRACT), plaintext_purged),
    }
)
"""Every forward move re-checks ``guard_trigger_enabled``: a disabled (or origin-only) guard
trigger stops the migration, whatever phase it is in."""


def _backward(current: Phase, target: Phase) -> tuple[Guard, ...]:
    """Guards of a backward move, derived from the behaviour table (see :mod:`dualwrite.phases`):

    * out of a phase without plaintext columns, or one that does not write plaintext:
      ``plaintext_columns_present`` (the next phase writes plaintext into them);
    * into a phase that reads plaintext: ``plaintext_complete``;
    * from reading ciphertext to reading plaintext: ``plaintext_verified``;
    * out of a phase that NULLs plaintext: every live instance observed it;
    * out of a phase that writes plaintext: no live instance still runs one that does not.
    """
    cur, tgt = BEHAVIOURS[current], BEHAVIOURS[target]
    guards: list[Guard] = []
    if not cur.plaintext_column_exists or not cur.writes_plaintext:
        guards.append(plaintext_columns_present)
    if tgt.requires_plaintext_complete:
        guards.append(plaintext_complete)
    if cur.reads_from is ReadSource.CIPHERTEXT and tgt.reads_from is ReadSource.PLAINTEXT:
        guards.append(plaintext_verified)
    if cur.nulls_plaintext:
        guards.append(fleet_observed(current))
    if cur.writes_plaintext:
        guards.append(_fleet_writes_plaintext)
    return tuple(guards)


def guards_for(current: Phase | str, target: Phase | str) -> tuple[Direction, tuple[Guard, ...]]:
    """The direction of a legal move and the guards it needs; illegal moves raise."""
    cur, tgt = Phase.parse(current), Phase.parse(target)
    direction = classify_move(cur, tgt)
    checks = FORWARD_GUARDS[cur] if direction is Direction.FORWARD else _backward(cur, tgt)
    return direction, checks


def evaluate(current: Phase | str, target: Phase | str, facts: Facts) -> Decision:
    """Evaluate every guard of ``current -> target``; illegal moves raise."""
    cur, tgt = Phase.parse(current), Phase.parse(target)
    direction, checks = guards_for(cur, tgt)
    return Decision(cur, tgt, direction, tuple(check(facts) for check in checks))
