"""Unit tests of the phase logic (the dualwrite.phases package): no database, no clock.

Forward moves: a snapshot where every guard passes is allowed; flipping exactly one fact makes
exactly one guard fail, with a reason that carries the numbers. Backward moves, illegal moves,
fleet liveness, the behaviour table and the backfill modes are covered the same way.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import json
from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import dualwrite.phases as phases_module
import dualwrite.phases.facts as facts_module
import dualwrite.phases.guards as guards_module
import dualwrite.phases.model as model_module
import dualwrite.phases.policy as policy_module
from dualwrite.errors import (
    DualwriteError,
    GuardsFailedError,
    IllegalTransitionError,
    ModeNotAllowedError,
    UnknownPhaseError,
)
from dualwrite.phases import (
    BEHAVIOURS,
    BackfillMode,
    Behaviour,
    Decision,
    Direction,
    Facts,
    GateView,
    GuardResult,
    InstanceView,
    Phase,
    ReadSource,
    TriggerView,
    VerificationView,
    backfill_mode_allowed,
    behaviour,
    classify_move,
    evaluate,
    live_instances,
    next_phase,
    previous_phase,
    require_backfill_mode,
)

P, DW, BF, RS, C, F = (
    Phase.PLAINTEXT,
    Phase.DUAL_WRITE,
    Phase.BACKFILL,
    Phase.READ_SWITCH,
    Phase.CONTRACT,
    Phase.FINALIZED,
)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ENTERED = NOW - timedelta(hours=1)  # the current phase was entered an hour ago
BACKFILL_DONE = NOW - timedelta(minutes=50)
VERIFY_STARTED = NOW - timedelta(minutes=45)
VERIFIED = NOW - timedelta(minutes=40)
GATED = NOW - timedelta(minutes=1)
VERSION = 5


def ts(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def inst(
    name: str = "api-1",
    *,
    phase: Phase | None,
    version: int | None = VERSION,
    keys: tuple[str, ...] = ("v1", "v2"),
    age: float = 0.0,
    host: str = "h1",
    pid: int = 11,
) -> InstanceView:
    return InstanceView(
        instance_id=name,
        observed_phase=phase,
        observed_version=version,
        key_versions=frozenset(keys),
        last_seen=NOW - timedelta(seconds=age),
        host=host,
        pid=pid,
    )


def fleet(current: Phase, lagging: InstanceView | None = None) -> tuple[InstanceView, ...]:
    """Two live instances that observed ``current``; ``lagging`` replaces the second one."""
    second = lagging or inst("api-2", phase=current, host="h2", pid=12)
    return (inst("api-1", phase=current), second)


def lagger(current: Phase, **kw: Any) -> InstanceView:
    """api-2 (host h2, pid 12), still at version 4 of the previous phase unless told otherwise."""
    kw.setdefault("phase", previous_phase(current))
    kw.setdefault("version", VERSION - 1)
    return inst("api-2", host="h2", pid=12, **kw)


def verification(
    mismatches: int = 0,
    missing: int = 0,
    undecryptable: int = 0,
    *,
    full: bool = True,
    started: datetime | None = VERIFY_STARTED,
    finished: datetime = VERIFIED,
) -> VerificationView:
    """A verification run that started at ``started`` and finished at ``finished``."""
    return VerificationView(
        finished, full, mismatches, missing, undecryptable, BF, started_at=started
    )


def good_facts(current: Phase, **overrides: Any) -> Facts:
    """A snapshot in which every guard of every move out of ``current`` passes."""
    base = Facts(
        now=NOW,
        state_version=VERSION,
        phase_changed_at=ENTERED,
        schema_expanded=True,
        plaintext_columns_present=True,
        current_key_version="v2",
        instances=fleet(current),
        backfill_finished_at=BACKFILL_DONE,
        last_verification=verification(),
        last_gate=GateView(GATED, True, current),
        guard_trigger=TriggerView("clients", "dualwrite_stale_guard", "A"),
    )
    return replace(base, **overrides)


def names(decision: Decision) -> list[str]:
    return [g.name for g in decision.guards]


# --- forward moves ------------------------------------------------------------------------------

FORWARD_GUARDS = {
    P: ["schema_expanded", "guard_trigger_enabled", "fleet_holds_current_key"],
    DW: ["guard_trigger_enabled", "fleet_observed_dual_write"],
    BF: [
        "guard_trigger_enabled",
        "coverage_complete",
        "verification_passed",
        "blind_indexes_built",
        "latency_gate_passed",
        "fleet_observed_backfill",
    ],
    RS: [
        "schema_expanded",
        "guard_trigger_enabled",
        "fleet_observed_read_switch",
        "soak_time",
        "no_shadow_mismatches",
        "no_plaintext_fallbacks",
        "latency_gate_passed",
    ],
    C: ["guard_trigger_enabled", "fleet_observed_contract", "plaintext_purged"],
}


def trigger(enabled: str | None) -> dict[str, Any]:
    return {"guard_trigger": TriggerView("clients", "dualwrite_stale_guard", enabled)}


@pytest.mark.parametrize("current", list(FORWARD_GUARDS))
def test_forward_move_allowed_when_every_guard_passes(current: Phase) -> None:
    target = next_phase(current)
    assert target is not None
    decision = evaluate(current, target, good_facts(current))
    assert decision.direction is Direction.FORWARD
    assert (decision.current, decision.target) == (current, target)
    assert names(decision) == FORWARD_GUARDS[current]
    assert decision.allowed, decision.failures
    assert decision.failures == ()
    decision.raise_if_refused()  # no error


def lag_reason(current: Phase) -> str:
    prev = previous_phase(current)
    return (
        f"instance api-2 (host h2, pid 12) has observed version 4 ({prev}), "
        f"needs version 5 ({current})"
    )


# (current phase, guard that must fail, facts overrides, expected fragments of the reason)
FORWARD_FAILURES: list[tuple[Phase, str, dict[str, Any], list[str]]] = [
    (P, "schema_expanded", {"schema_expanded": False}, ["expand schema is missing", "db upgrade"]),
    # a unique field's UNIQUE index must be valid before contract stops the plaintext constraint
    (RS, "schema_expanded", {"schema_expanded": False}, ["expand schema is missing"]),
    (P, "fleet_holds_current_key", {"current_key_version": None}, ["no current key version"]),
    (
        P,
        "fleet_holds_current_key",
        {"instances": fleet(P, lagger(P, phase=P, version=VERSION, keys=("v1",)))},
        ["instance api-2 (host h2, pid 12) holds v1, needs v2"],
    ),
    (
        P,
        "fleet_holds_current_key",
        {"instances": fleet(P, lagger(P, phase=P, version=VERSION, keys=()))},
        ["instance api-2 (host h2, pid 12) holds no keys, needs v2"],
    ),
    (DW, "fleet_observed_dual_write", {"instances": fleet(DW, lagger(DW))}, [lag_reason(DW)]),
    (
        DW,
        "fleet_observed_dual_write",
        {"instances": fleet(DW, lagger(DW, phase=None, version=None))},
        ["instance api-2 (host h2, pid 12) has not observed any phase yet, needs version 5"],
    ),
    (BF, "coverage_complete", {"rows_missing_ciphertext": 3}, ["3 rows still lack ciphertext"]),
    (BF, "verification_passed", {"backfill_finished_at": None}, ["backfill has not finished"]),
    (BF, "verification_passed", {"last_verification": None}, ["no full verification"]),
    (
        BF,
        "verification_passed",
        {"last_verification": verification(full=False)},
        ["no full verification"],
    ),
    (
        BF,
        "verification_passed",
        {"last_verification": verification(started=BACKFILL_DONE, finished=BACKFILL_DONE)},
        [f"started at {ts(BACKFILL_DONE)}, not after the backfill finished"],
    ),
    (  # started while the backfill still ran, finished after it: does not count
        BF,
        "verification_passed",
        {"last_verification": verification(started=BACKFILL_DONE - timedelta(seconds=1))},
        ["not after the backfill finished", ts(BACKFILL_DONE)],
    ),
    (
        BF,
        "verification_passed",
        {"last_verification": verification(started=None)},
        ["started at an unknown time, not after the backfill finished"],
    ),
    (
        BF,
        "verification_passed",
        {"last_verification": verification(2, 0, 0)},
        ["2 mismatches, 0 missing, 0 undecryptable"],
    ),
    (
        BF,
        "verification_passed",
        {"last_verification": verification(0, 4, 0)},
        ["0 mismatches, 4 missing, 0 undecryptable"],
    ),
    (
        BF,
        "verification_passed",
        {"last_verification": verification(0, 0, 1)},
        ["0 mismatches, 0 missing, 1 undecryptable"],
    ),
    (
        BF,
        "blind_indexes_built",
        {"blind_indexes_missing": ("ix_t_email_bidx", "ix_t_phone_bidx")},
        ["indexes ix_t_email_bidx, ix_t_phone_bidx", "--defer-indexes", "dualwrite backfill"],
    ),
    (BF, "latency_gate_passed", {"last_gate": None}, ["no latency gate has run in backfill"]),
    (BF, "latency_gate_passed", {"last_gate": GateView(GATED, False, BF)}, ["failed", ts(GATED)]),
    (
        BF,
        "latency_gate_passed",
        {"last_gate": GateView(GATED, True, DW)},
        ["no latency gate has run in backfill", f"last: dual_write at {ts(GATED)}"],
    ),
    (
        BF,
        "latency_gate_passed",
        {"last_gate": GateView(ENTERED, True, BF)},
        [f"since {ts(ENTERED)}"],
    ),
    (BF, "fleet_observed_backfill", {"instances": fleet(BF, lagger(BF))}, [lag_reason(BF)]),
    (RS, "fleet_observed_read_switch", {"instances": fleet(RS, lagger(RS))}, [lag_reason(RS)]),
    (
        RS,
        "soak_time",
        {"phase_changed_at": NOW - timedelta(seconds=120)},
        ["soak time: 120s of 300s elapsed, 180s left"],
    ),
    (RS, "soak_time", {"soak_seconds": 7200.0}, ["3600s of 7200s elapsed, 3600s left"]),
    (
        RS,
        "no_shadow_mismatches",
        {"shadow_mismatches_since_switch": 2},
        ["2 shadow-read mismatches since the switch"],
    ),
    (
        RS,
        "no_plaintext_fallbacks",
        {"fallbacks_since_switch": 5},
        ["5 plaintext fallbacks since the switch"],
    ),
    (RS, "latency_gate_passed", {"last_gate": None}, ["no latency gate has run in read_switch"]),
    (RS, "latency_gate_passed", {"last_gate": GateView(GATED, False, RS)}, ["failed"]),
    (
        RS,
        "latency_gate_passed",
        {"last_gate": GateView(GATED, True, BF)},  # a backfill-phase gate does not count
        ["last: backfill"],
    ),
    (
        RS,
        "latency_gate_passed",
        {"last_gate": GateView(ENTERED - timedelta(seconds=1), True, RS)},
        [f"since {ts(ENTERED)}"],
    ),
    *[
        (
            phase,
            "guard_trigger_enabled",
            trigger(enabled),
            [f"trigger dualwrite_stale_guard on clients is {state}", *fix],
        )
        for phase in (P, DW, BF, RS, C)
        for enabled, state, fix in (
            ("D", "disabled", ["ALTER TABLE clients ENABLE ALWAYS TRIGGER dualwrite_stale_guard"]),
            ("O", "enabled for origin sessions only", ["session_replication_role = replica"]),
            (None, "missing", []),
        )
    ],
    (DW, "guard_trigger_enabled", {"guard_trigger": None}, ["was not inspected"]),
    (C, "fleet_observed_contract", {"instances": fleet(C, lagger(C))}, [lag_reason(C)]),
    (C, "plaintext_purged", {"rows_with_plaintext": 12}, ["12 rows still hold plaintext"]),
]


@pytest.mark.parametrize(
    ("current", "guard", "overrides", "fragments"),
    FORWARD_FAILURES,
    ids=[f"{c}-{g}-{'-'.join(o)}-{i}" for i, (c, g, o, _) in enumerate(FORWARD_FAILURES)],
)
def test_forward_guard_fails_alone(
    current: Phase, guard: str, overrides: dict[str, Any], fragments: list[str]
) -> None:
    target = next_phase(current)
    assert target is not None
    decision = evaluate(current, target, good_facts(current, **overrides))
    assert not decision.allowed
    assert [g.name for g in decision.failures] == [guard]
    assert names(decision) == FORWARD_GUARDS[current]  # the passing guards are still listed
    reason = decision.failures[0].reason
    for fragment in fragments:
        assert fragment in reason
    with pytest.raises(GuardsFailedError) as info:
        decision.raise_if_refused()
    assert info.value.failures == (GuardResult(guard, False, reason),)
    assert f"cannot move from {current} to {target}" in str(info.value)


def test_every_forward_guard_has_a_failing_case() -> None:
    covered = {(c, g) for c, g, _, _ in FORWARD_FAILURES}
    assert covered == {(c, g) for c, gs in FORWARD_GUARDS.items() for g in gs}


def test_all_forward_guards_fail_together_and_are_all_listed() -> None:
    facts = good_facts(
        BF,
        rows_missing_ciphertext=7,
        last_verification=None,
        last_gate=None,
        instances=fleet(BF, lagger(BF)),
        guard_trigger=None,
        blind_indexes_missing=("ix_t_email_bidx",),
    )
    decision = evaluate(BF, RS, facts)
    assert [g.name for g in decision.failures] == FORWARD_GUARDS[BF]
    assert "7 rows" in decision.failures[1].reason


@pytest.mark.parametrize("current", [BF, RS])
def test_latency_gate_can_be_switched_off(current: Phase) -> None:
    target = next_phase(current)
    assert target is not None
    decision = evaluate(
        current, target, good_facts(current, last_gate=None, require_latency_gate=False)
    )
    assert decision.allowed
    gate = next(g for g in decision.guards if g.name == "latency_gate_passed")
    assert gate.passed and "not required" in gate.reason


def test_soak_time_is_inclusive_and_reports_progress() -> None:
    facts = good_facts(RS, phase_changed_at=NOW - timedelta(seconds=300))
    soak = next(g for g in evaluate(RS, C, facts).guards if g.name == "soak_time")
    assert soak == GuardResult("soak_time", True, "soak time: 300s of 300s elapsed")


def test_passing_reasons_are_informative() -> None:
    decision = evaluate(RS, C, good_facts(RS))
    reasons = {g.name: g.reason for g in decision.guards}
    assert reasons["fleet_observed_read_switch"] == "all 2 live instances are ready"
    assert reasons["no_shadow_mismatches"] == "0 shadow-read mismatches since the switch"
    assert reasons["latency_gate_passed"] == f"latency gate passed at {ts(GATED)}"


# --- backward moves -----------------------------------------------------------------------------

BACKWARD_GUARDS = {
    (DW, P): ["plaintext_complete", "fleet_writes_plaintext"],
    (BF, DW): ["plaintext_complete", "fleet_writes_plaintext"],
    (RS, BF): ["plaintext_complete", "plaintext_verified", "fleet_writes_plaintext"],
    (C, RS): ["plaintext_columns_present", "fleet_observed_contract"],
    (F, C): ["plaintext_columns_present"],
}


@pytest.mark.parametrize(("current", "target"), list(BACKWARD_GUARDS))
def test_backward_move_allowed_when_plaintext_complete(current: Phase, target: Phase) -> None:
    decision = evaluate(current, target, good_facts(current))
    assert decision.direction is Direction.BACKWARD
    assert names(decision) == BACKWARD_GUARDS[(current, target)]
    assert decision.allowed, decision.failures


@pytest.mark.parametrize(
    ("current", "target"), [m for m in BACKWARD_GUARDS if m not in ((F, C), (C, RS))]
)
def test_backward_move_refused_when_plaintext_incomplete(current: Phase, target: Phase) -> None:
    decision = evaluate(current, target, good_facts(current, rows_ciphertext_without_plaintext=5))
    assert [g.name for g in decision.failures] == ["plaintext_complete"]
    assert decision.failures[0].reason == (
        "5 rows have ciphertext but no plaintext: run `dualwrite backfill --mode decrypt`"
    )


def test_rollback_is_not_blocked_by_forward_facts() -> None:
    bad = good_facts(
        RS,
        shadow_mismatches_since_switch=9,
        fallbacks_since_switch=9,
        last_gate=None,
        rows_missing_ciphertext=9,
    )
    assert evaluate(RS, BF, bad).allowed


def test_finalized_to_contract_needs_the_plaintext_columns_back() -> None:
    facts = good_facts(F, plaintext_columns_present=False)
    decision = evaluate(F, C, facts)
    assert [g.name for g in decision.failures] == ["plaintext_columns_present"]
    assert "Alembic downgrade" in decision.failures[0].reason
    # contract reads ciphertext and does not need complete plaintext: NULL plaintext is fine
    assert evaluate(F, C, good_facts(F, rows_ciphertext_without_plaintext=5)).allowed


def test_contract_to_read_switch_needs_every_instance_on_the_current_state() -> None:
    lagging = lagger(C, phase=F, version=4)
    decision = evaluate(C, RS, good_facts(C, instances=fleet(C, lagging)))
    assert [g.name for g in decision.failures] == ["fleet_observed_contract"]
    assert decision.failures[0].reason == (
        "instance api-2 (host h2, pid 12) has observed version 4 (finalized), "
        "needs version 5 (contract)"
    )


def test_read_switch_to_backfill_waits_for_instances_that_still_null_plaintext() -> None:
    # just back from contract: api-2 has not yet seen read_switch and still writes NULL plaintext
    still_contract = lagger(RS, phase=C, version=4)
    decision = evaluate(RS, BF, good_facts(RS, instances=fleet(RS, still_contract)))
    assert [g.name for g in decision.failures] == ["fleet_writes_plaintext"]
    assert decision.failures[0].reason == (
        "instance api-2 (host h2, pid 12) still runs contract and does not write plaintext"
    )
    unknown = lagger(RS, phase=None, version=None)
    decision = evaluate(RS, BF, good_facts(RS, instances=fleet(RS, unknown)))
    assert [g.name for g in decision.failures] == ["fleet_writes_plaintext"]
    assert "has not observed any phase yet" in decision.failures[0].reason
    # a lagging instance that still writes plaintext (backfill) does not block a rollback
    behind = lagger(RS, phase=BF, version=4)
    assert evaluate(RS, BF, good_facts(RS, instances=fleet(RS, behind))).allowed


# --- the rollback rule (DESIGN §5, "Rollback") ----------------------------------------------

DECRYPTED = NOW - timedelta(minutes=30)  # the last decrypt pass finished
SECOND = timedelta(seconds=1)


def failures_of(decision: Decision) -> list[str]:
    return [g.name for g in decision.failures]


def verified_reason(decision: Decision) -> str:
    return next(g.reason for g in decision.guards if g.name == "plaintext_verified")


def test_contract_to_read_switch_needs_the_columns_not_complete_plaintext() -> None:
    # reads stay on ciphertext: NULL plaintext and no verification do not block the move
    facts = good_facts(C, rows_ciphertext_without_plaintext=40, last_verification=None)
    assert evaluate(C, RS, facts).allowed
    decision = evaluate(C, RS, replace(facts, plaintext_columns_present=False))
    assert failures_of(decision) == ["plaintext_columns_present"]


def test_back_to_plaintext_reads_needs_a_verification_started_after_the_last_decrypt() -> None:
    # the default verification started 45 minutes ago, the decrypt finished 30 minutes ago
    decision = evaluate(RS, BF, good_facts(RS, decrypt_finished_at=DECRYPTED))
    assert failures_of(decision) == ["plaintext_verified"]
    assert verified_reason(decision) == (
        f"the last full verification started at {ts(VERIFY_STARTED)}, not after the last "
        f"decrypt pass finished ({ts(DECRYPTED)}): run `dualwrite verify --full` again"
    )
    # started while the decrypt still ran, finished after it: does not count
    during = verification(started=DECRYPTED - SECOND, finished=NOW)
    facts = good_facts(RS, decrypt_finished_at=DECRYPTED, last_verification=during)
    assert failures_of(evaluate(RS, BF, facts)) == ["plaintext_verified"]
    after = replace(facts, last_verification=verification(started=DECRYPTED + SECOND))
    decision = evaluate(RS, BF, after)
    assert decision.allowed, decision.failures
    assert verified_reason(decision) == (
        f"the last full verification ({ts(DECRYPTED + SECOND)}, after the last decrypt pass "
        "finished): 0 mismatches, 0 missing, 0 undecryptable"
    )


def test_back_to_plaintext_reads_needs_a_verification_started_after_the_fleet_observed() -> None:
    observed = NOW - timedelta(minutes=20)  # api-2 reported read_switch only then
    late = replace(inst("api-2", phase=RS, host="h2", pid=12), observed_at=observed)
    facts = good_facts(RS, instances=(inst("api-1", phase=RS), late))
    decision = evaluate(RS, BF, facts)
    assert failures_of(decision) == ["plaintext_verified"]
    assert f"not after the fleet observed the current phase ({ts(observed)})" in (
        verified_reason(decision)
    )
    fresh = verification(started=observed + SECOND, finished=NOW)
    assert evaluate(RS, BF, replace(facts, last_verification=fresh)).allowed
    # an instance that stopped heartbeating does not hold the anchor back
    gone = replace(late, last_seen=NOW - timedelta(minutes=10))
    assert evaluate(RS, BF, replace(facts, instances=(inst("api-1", phase=RS), gone))).allowed


def test_without_live_instances_the_anchor_is_the_phase_change() -> None:
    entered = NOW - timedelta(minutes=10)
    decision = evaluate(RS, BF, good_facts(RS, instances=(), phase_changed_at=entered))
    assert failures_of(decision) == ["plaintext_verified"]
    assert f"not after the fleet observed the current phase ({ts(entered)})" in (
        verified_reason(decision)
    )


@pytest.mark.parametrize(
    ("found", "fragment"),
    [
        (None, "no full verification has run"),
        (verification(full=False), "no full verification has run"),
        (verification(started=None), "started at an unknown time"),
        (verification(1, 0, 0), "1 mismatches, 0 missing, 0 undecryptable: run `dualwrite verify"),
        (verification(0, 0, 3), "0 mismatches, 0 missing, 3 undecryptable"),
    ],
)
def test_back_to_plaintext_reads_needs_a_clean_full_verification(
    found: VerificationView | None, fragment: str
) -> None:
    decision = evaluate(RS, BF, good_facts(RS, last_verification=found))
    assert failures_of(decision) == ["plaintext_verified"]
    assert fragment in verified_reason(decision)


def test_back_to_plaintext_reads_accepts_missing_ciphertext() -> None:
    # a plaintext-only writer made the guard clear those ciphertexts: the plaintext is newer
    decision = evaluate(RS, BF, good_facts(RS, last_verification=verification(0, 2, 0)))
    assert decision.allowed, decision.failures
    assert verified_reason(decision).endswith("0 mismatches, 2 missing, 0 undecryptable")


def test_back_to_plaintext_reads_waits_for_an_unfinished_decrypt() -> None:
    fresh = verification(started=NOW - SECOND, finished=NOW)
    facts = good_facts(RS, decrypt_unfinished=True, last_verification=fresh)
    decision = evaluate(RS, BF, facts)
    assert failures_of(decision) == ["plaintext_verified"]
    assert verified_reason(decision).startswith("a decrypt pass has not finished")


@pytest.mark.parametrize(("current", "target"), [(BF, DW), (DW, P)])
def test_moves_between_plaintext_reading_phases_need_no_verification(
    current: Phase, target: Phase
) -> None:
    facts = good_facts(current, last_verification=None, decrypt_finished_at=NOW)
    assert evaluate(current, target, facts).allowed


@pytest.mark.parametrize("phase", [C, F])
def test_decrypt_is_refused_outside_read_switch_in_one_line(phase: Phase) -> None:
    with pytest.raises(ModeNotAllowedError) as info:
        require_backfill_mode(phase, M.DECRYPT)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"backfill mode 'decrypt' is not allowed in phase '{phase}'")
    assert message.endswith("decrypt runs in read_switch, once every instance writes plaintext "
                            "again (move back to read_switch first)")  # fmt: skip
    require_backfill_mode(RS, M.DECRYPT)


# --- illegal moves ------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(Phase))
def test_same_phase_is_illegal(phase: Phase) -> None:
    with pytest.raises(IllegalTransitionError, match=f"^already in {phase}$"):
        evaluate(phase, phase, good_facts(phase))


FORWARD_SKIPS = [(a, b) for a in Phase for b in Phase if b.index > a.index + 1]
BACKWARD_SKIPS = [(a, b) for a in Phase for b in Phase if b.index < a.index - 1]


@pytest.mark.parametrize(("current", "target"), FORWARD_SKIPS)
def test_forward_skip_is_illegal(current: Phase, target: Phase) -> None:
    with pytest.raises(IllegalTransitionError) as info:
        evaluate(current, target, good_facts(current))
    assert str(info.value) == (
        f"cannot skip from {current} to {target}: move one step at a time "
        f"(next: {next_phase(current)})"
    )


@pytest.mark.parametrize(("current", "target"), BACKWARD_SKIPS)
def test_backward_skip_is_illegal(current: Phase, target: Phase) -> None:
    with pytest.raises(IllegalTransitionError) as info:
        classify_move(current, target)
    message = str(info.value)
    assert message.startswith(f"cannot skip back from {current} to {target}: ")
    assert message.endswith(f"(previous: {previous_phase(current)})")
    if current is F:
        assert "Alembic downgrade" in message
        assert "`dualwrite backfill --mode decrypt`" in message
    else:
        assert "move back one step at a time" in message


def test_exactly_ten_moves_are_legal() -> None:
    legal: dict[tuple[Phase, Phase | None], Direction] = {}
    for a in Phase:
        for b in Phase:
            with contextlib.suppress(IllegalTransitionError):
                legal[(a, b)] = classify_move(a, b)
    expected: dict[tuple[Phase, Phase | None], Direction] = {
        (a, next_phase(a)): Direction.FORWARD for a in FORWARD_GUARDS
    }
    expected.update({move: Direction.BACKWARD for move in BACKWARD_GUARDS})
    assert len(expected) == 10
    assert legal == expected


@pytest.mark.parametrize(("current", "target"), [("plaintext", "encrypted"), ("nope", "plaintext")])
def test_unknown_phase_name_is_refused(current: str, target: str) -> None:
    with pytest.raises(
        UnknownPhaseError, match=r"^unknown phase '(encrypted|nope)': expected one of "
    ):
        evaluate(current, target, good_facts(P))
    with pytest.raises(UnknownPhaseError):
        classify_move(current, target)


def test_phase_names_are_accepted_as_strings() -> None:
    decision = evaluate("dual_write", "BACKFILL", good_facts(DW))
    assert (decision.current, decision.target) == (DW, BF)
    assert classify_move("read-switch", "contract") is Direction.FORWARD


# --- fleet liveness -----------------------------------------------------------------------------


def test_dead_instances_are_ignored_by_fleet_guards() -> None:
    dead = lagger(DW, age=12.5)  # past its grace: 2 windows of 3 poll intervals (2 s) = 12 s
    decision = evaluate(DW, BF, good_facts(DW, instances=fleet(DW, dead)))
    assert decision.allowed
    assert decision.guards[-1].reason == "all 1 live instances are ready"


def test_a_live_lagging_instance_blocks_and_liveness_is_exclusive() -> None:
    inside = lagger(DW, age=5.9)
    assert live_instances(good_facts(DW, instances=(inside,))) == (inside,)
    boundary = lagger(DW, age=6.0)
    assert live_instances(good_facts(DW, instances=(boundary,))) == ()
    decision = evaluate(DW, BF, good_facts(DW, instances=fleet(DW, boundary)))
    assert [g.name for g in decision.failures] == ["fleet_observed_dual_write"]  # its grace


def test_liveness_follows_the_operator_interval_only_without_the_instances_own() -> None:
    lagging = lagger(DW, age=20.0)
    assert evaluate(DW, BF, good_facts(DW, instances=fleet(DW, lagging))).allowed
    slow = good_facts(DW, instances=fleet(DW, lagging), poll_interval_seconds=10.0)
    assert not evaluate(DW, BF, slow).allowed


@pytest.mark.parametrize("age", [0.0, 6.0, 6.5, 15.0, 29.0, 29.9])
def test_an_instance_polling_every_10s_is_live_for_30s_whatever_the_operator_uses(
    age: float,
) -> None:
    slow = replace(lagger(DW, age=age), poll_interval_seconds=10.0)
    facts = good_facts(DW, instances=(slow,), poll_interval_seconds=2.0)
    assert live_instances(facts) == (slow,)
    failures = evaluate(DW, BF, facts).failures
    assert [g.name for g in failures] == ["fleet_observed_dual_write"]
    assert "has observed version 4" in failures[0].reason
    assert "not heard from" not in failures[0].reason


def test_a_fast_instance_is_dead_after_its_own_window_even_with_a_slow_operator() -> None:
    fast = replace(lagger(DW, age=1.0), poll_interval_seconds=0.2)  # window 0.6 s, grace 1.2 s
    facts = good_facts(DW, instances=fleet(DW, fast), poll_interval_seconds=10.0)
    assert live_instances(facts) == facts.instances[:1]
    assert "not heard from for 1s" in evaluate(DW, BF, facts).failures[0].reason
    gone = replace(fast, last_seen=NOW - timedelta(seconds=1.3))
    assert evaluate(DW, BF, replace(facts, instances=fleet(DW, gone))).allowed


def test_a_vanished_instance_blocks_for_two_windows_plus_its_longest_request() -> None:
    def at(age: float) -> Facts:
        gone = replace(lagger(DW, age=age), poll_interval_seconds=1.0, longest_request_seconds=4)
        return good_facts(DW, instances=fleet(DW, gone))

    assert live_instances(at(3.5)) == at(3.5).instances[:1]
    for age in (3.0, 6.0, 9.9):
        (failure,) = evaluate(DW, BF, at(age)).failures
        assert failure.reason == (
            f"instance api-2 not heard from for {age:.0f}s, may still be writing: has observed "
            "version 4 (plaintext), needs version 5 (dual_write); `dualwrite fleet forget "
            "api-2` if it is gone"
        )
    assert evaluate(DW, BF, at(10.0)).allowed


def test_a_vanished_instance_that_satisfies_the_guard_does_not_block() -> None:
    gone = replace(inst("api-2", phase=DW, age=7.0), poll_interval_seconds=2.0)
    decision = evaluate(DW, BF, good_facts(DW, instances=(gone,)))
    assert decision.allowed
    assert decision.guards[-1].reason == "no live instances"


def test_live_instances() -> None:
    a, b, c = inst("a", phase=P), inst("b", phase=P, age=5.9), inst("c", phase=P, age=60)
    facts = good_facts(P, instances=(a, b, c))
    assert live_instances(facts) == (a, b)
    assert live_instances(replace(facts, instances=())) == ()


@pytest.mark.parametrize(("current", "target"), [(P, DW), (DW, BF), (C, F), (C, RS), (RS, BF)])
def test_fleet_guard_passes_without_live_instances(current: Phase, target: Phase) -> None:
    all_dead = (lagger(current, age=3600, keys=()),)
    decision = evaluate(current, target, good_facts(current, instances=all_dead))
    assert decision.allowed
    fleet_guards = [g for g in decision.guards if g.name.startswith("fleet_")]
    assert fleet_guards and all(g.reason == "no live instances" for g in fleet_guards)


def test_missing_current_key_fails_even_without_instances() -> None:
    decision = evaluate(P, DW, good_facts(P, instances=(), current_key_version=None))
    assert [g.name for g in decision.failures] == ["fleet_holds_current_key"]


def test_an_instance_ahead_of_the_snapshot_counts_as_observed() -> None:
    ahead = lagger(DW, phase=BF, version=VERSION + 1)
    assert evaluate(DW, BF, good_facts(DW, instances=fleet(DW, ahead))).allowed


@pytest.mark.parametrize(("count", "suffix"), [(3, ""), (4, " (and 1 more)"), (5, " (and 2 more)")])
def test_many_lagging_instances_are_summarised(count: int, suffix: str) -> None:
    laggards = tuple(inst(f"api-{n}", phase=DW, version=3, host="", pid=0) for n in range(count))
    decision = evaluate(BF, RS, good_facts(BF, instances=laggards))
    reason = decision.failures[0].reason
    assert decision.failures[0].name == "fleet_observed_backfill"
    assert reason.startswith("instance api-0 has observed version 3 (dual_write), needs version 5")
    assert reason.count("instance api-") == 3
    assert reason.endswith("needs version 5 (backfill)" + suffix)


def test_instance_label() -> None:
    assert inst("x", phase=P, host="", pid=0).label == "instance x"
    assert inst("x", phase=P, host="h", pid=0).label == "instance x (host h)"
    assert inst("x", phase=P, host="h", pid=7).label == "instance x (host h, pid 7)"


# --- behaviour table ----------------------------------------------------------------------------

M = BackfillMode
T, _ = True, False
# writes pt, nulls pt, pt column exists, writes ct, reads from, shadow, fallback, modes, pt complete
EXPECTED_ROWS: dict[Phase, tuple[Any, ...]] = {
    P: (T, _, T, _, "plaintext", _, _, set(), T),
    DW: (T, _, T, T, "plaintext", _, _, set(), T),
    BF: (T, _, T, T, "plaintext", T, _, {M.ENCRYPT, M.REKEY}, T),
    RS: (T, _, T, T, "ciphertext", T, T, {M.ENCRYPT, M.REKEY, M.DECRYPT}, _),
    C: (_, T, T, T, "ciphertext", _, T, {M.PURGE, M.REKEY}, _),
    F: (_, _, _, T, "ciphertext", _, _, {M.REKEY}, _),
}


def expected_behaviour(phase: Phase) -> Behaviour:
    wpt, npt, col, wct, reads, shadow, fallback, modes, complete = EXPECTED_ROWS[phase]
    return Behaviour(
        phase=phase,
        writes_plaintext=wpt,
        nulls_plaintext=npt,
        plaintext_column_exists=col,
        writes_ciphertext=wct,
        reads_from=ReadSource(reads),
        shadow_compare=shadow,
        fallback_to_plaintext=fallback,
        backfill_modes=frozenset(modes),
        requires_plaintext_complete=complete,
    )


@pytest.mark.parametrize("phase", list(Phase))
def test_behaviour_table(phase: Phase) -> None:
    assert BEHAVIOURS[phase] == expected_behaviour(phase)
    assert behaviour(phase) is BEHAVIOURS[phase]
    assert behaviour(phase.value.upper()) is BEHAVIOURS[phase]


def test_behaviour_table_fields_by_name() -> None:
    contract = behaviour(C)
    assert contract.writes_plaintext is False and contract.nulls_plaintext is True
    assert contract.plaintext_column_exists is True and contract.reads_from is ReadSource.CIPHERTEXT
    finalized = behaviour(F)
    assert finalized.plaintext_column_exists is False and finalized.nulls_plaintext is False
    assert behaviour(BF).shadow_compare and behaviour(BF).reads_from is ReadSource.PLAINTEXT
    assert behaviour(RS).fallback_to_plaintext and behaviour(RS).shadow_compare
    assert not behaviour(P).writes_ciphertext and behaviour(DW).writes_ciphertext


def test_behaviour_table_is_complete_and_read_only() -> None:
    assert list(BEHAVIOURS) == list(Phase)
    with pytest.raises(TypeError):
        BEHAVIOURS[P] = BEHAVIOURS[F]  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        BEHAVIOURS[P].writes_plaintext = False  # type: ignore[misc]


def test_behaviour_of_unknown_phase() -> None:
    with pytest.raises(UnknownPhaseError):
        behaviour("encrypted")


def test_behaviour_describe_is_json_friendly() -> None:
    described = behaviour(RS).describe()
    assert json.loads(json.dumps(described)) == {
        "phase": "read_switch",
        "writes_plaintext": True,
        "nulls_plaintext": False,
        "plaintext_column_exists": True,
        "writes_ciphertext": True,
        "reads_from": "ciphertext",
        "shadow_compare": True,
        "fallback_to_plaintext": True,
        "backfill_modes": ["encrypt", "decrypt", "rekey"],
        "requires_plaintext_complete": False,
    }
    assert behaviour(F).describe()["backfill_modes"] == ["rekey"]


# --- backfill modes -----------------------------------------------------------------------------

ALLOWED_MODES = {
    P: set(),
    DW: set(),
    BF: {M.ENCRYPT, M.REKEY},
    RS: {M.ENCRYPT, M.REKEY, M.DECRYPT},
    C: {M.PURGE, M.REKEY},
    F: {M.REKEY},
}


@pytest.mark.parametrize(("phase", "mode"), [(p, m) for p in Phase for m in BackfillMode])
def test_backfill_mode_matrix(phase: Phase, mode: BackfillMode) -> None:
    allowed = mode in ALLOWED_MODES[phase]
    assert backfill_mode_allowed(phase, mode) is allowed
    assert backfill_mode_allowed(phase.value, mode.value) is allowed
    if allowed:
        require_backfill_mode(phase, mode)
    else:
        with pytest.raises(ModeNotAllowedError, match=f"^backfill mode '{mode}' is not allowed"):
            require_backfill_mode(phase, mode)


def test_mode_refusal_messages() -> None:
    with pytest.raises(ModeNotAllowedError) as info:
        require_backfill_mode(BF, M.PURGE)
    assert str(info.value) == (
        "backfill mode 'purge' is not allowed in phase 'backfill' (allowed: encrypt, rekey)"
    )
    with pytest.raises(ModeNotAllowedError) as info:
        require_backfill_mode("dual_write", "encrypt")
    assert str(info.value).endswith("in phase 'dual_write' (allowed: none)")


def test_backfill_mode_parse() -> None:
    assert BackfillMode.parse(" Purge ") is M.PURGE
    with pytest.raises(ValueError) as info:
        BackfillMode.parse("shred")
    assert str(info.value) == (
        "unknown backfill mode 'shred': expected one of encrypt, decrypt, rekey, purge"
    )
    assert not isinstance(info.value, DualwriteError)
    with pytest.raises(ValueError):
        backfill_mode_allowed(BF, "shred")


# --- phase basics -------------------------------------------------------------------------------


def test_phase_order_and_neighbours() -> None:
    assert [p.index for p in Phase] == [0, 1, 2, 3, 4, 5]
    assert [p.value for p in Phase] == [
        "plaintext",
        "dual_write",
        "backfill",
        "read_switch",
        "contract",
        "finalized",
    ]
    assert [next_phase(p) for p in Phase] == [DW, BF, RS, C, F, None]
    assert [previous_phase(p) for p in Phase] == [None, P, DW, BF, RS, C]
    assert next_phase("plaintext") is DW


@pytest.mark.parametrize(
    ("name", "phase"),
    [("plaintext", P), ("DUAL_WRITE", DW), (" read-switch ", RS), ("Finalized", F), (C, C)],
)
def test_phase_parse(name: str, phase: Phase) -> None:
    assert Phase.parse(name) is phase


@pytest.mark.parametrize("name", ["", "encrypted", "read switch", "dual__write"])
def test_phase_parse_refuses_unknown_names(name: str) -> None:
    with pytest.raises(UnknownPhaseError) as info:
        Phase.parse(name)
    assert str(info.value) == (
        f"unknown phase {name!r}: expected one of plaintext, dual_write, backfill, read_switch, "
        "contract, finalized"
    )


def test_enum_values() -> None:
    assert [d.value for d in Direction] == ["forward", "backward"]
    assert [r.value for r in ReadSource] == ["plaintext", "ciphertext"]
    assert [m.value for m in BackfillMode] == ["encrypt", "decrypt", "rekey", "purge"]


# --- decision -----------------------------------------------------------------------------------


def test_decision_describe_is_json_friendly() -> None:
    decision = evaluate(C, F, good_facts(C, rows_with_plaintext=12))
    described = json.loads(json.dumps(decision.describe()))
    assert described["current"] == "contract" and described["target"] == "finalized"
    assert described["direction"] == "forward" and described["allowed"] is False
    assert described["guards"] == [
        {
            "name": "guard_trigger_enabled",
            "passed": True,
            "reason": "trigger dualwrite_stale_guard on clients is enabled always",
        },
        {
            "name": "fleet_observed_contract",
            "passed": True,
            "reason": "all 2 live instances are ready",
        },
        {
            "name": "plaintext_purged",
            "passed": False,
            "reason": "12 rows still hold plaintext: run `dualwrite backfill --mode purge`",
        },
    ]


def test_decision_with_no_guards_is_allowed() -> None:
    assert Decision(P, DW, Direction.FORWARD, ()).allowed


# --- purity and docs ----------------------------------------------------------------------------


PHASE_MODULES = [phases_module, model_module, facts_module, guards_module, policy_module]


@pytest.mark.parametrize("module", [model_module, guards_module, policy_module])
def test_doctests_pass(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("module", PHASE_MODULES)
def test_module_is_pure(module: Any) -> None:
    """No I/O imports and no clock reads in the pure core."""
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    allowed = {
        "__future__",
        "collections.abc",
        "dataclasses",
        "datetime",
        "enum",
        "types",
        "typing",
        "dualwrite.errors",
        "dualwrite.phases.facts",
        "dualwrite.phases.guards",
        "dualwrite.phases.model",
        "dualwrite.phases.policy",
    }
    assert imported <= allowed
    clock_calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    } & {"now", "utcnow", "today", "time", "monotonic"}
    assert clock_calls == set()


def test_an_expand_schema_failing_on_its_trigger_says_so() -> None:
    decision = evaluate(P, DW, good_facts(P, schema_expanded=False, **trigger("O")))
    reasons = {g.name: g.reason for g in decision.failures}
    assert list(reasons) == ["schema_expanded", "guard_trigger_enabled"]
    assert reasons["schema_expanded"] == (
        "expand schema is incomplete: trigger dualwrite_stale_guard is not enabled always"
    )
