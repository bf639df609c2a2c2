"""Guard evaluation inputs and the individual guards of phase moves (pure).

:mod:`dualwrite.phases.policy` says which guard applies to which move. This module only knows
how to check one fact against a :class:`~dualwrite.phases.facts.Facts` snapshot; it never reads
the clock (``facts.now`` is the time of the snapshot) and never touches the database.

Every guard returns a :class:`GuardResult`, passed or not, with a short reason carrying the
numbers, so the admin API can list all of them:

>>> from datetime import UTC, datetime
>>> from dualwrite.phases.facts import Facts
>>> t = datetime(2025, 1, 1, 12, tzinfo=UTC)
>>> facts = Facts(now=t, state_version=5, phase_changed_at=t, schema_expanded=True,
...               plaintext_columns_present=True, current_key_version="v2",
...               rows_missing_ciphertext=3)
>>> coverage_complete(facts)
GuardResult(name='coverage_complete', passed=False, reason='3 rows still lack ciphertext: \
run `dualwrite backfill --mode encrypt`')

A fleet guard passes when no instance is live or vanished within its grace (reason ``"no live
instances"``) and lists at most three offending instances otherwise. A vanished instance (see
:mod:`dualwrite.phases.facts`) that would not satisfy the guard blocks it as "not heard from":

>>> from dataclasses import replace
>>> from datetime import timedelta
>>> from dualwrite.phases.facts import InstanceView
>>> gone = InstanceView("api-3", Phase.PLAINTEXT, 4, frozenset({"v2"}), t - timedelta(seconds=8))
>>> fleet_observed(Phase.DUAL_WRITE)(replace(facts, instances=(gone,))).reason
'instance api-3 not heard from for 8s, may still be writing: has observed version 4 \
(plaintext), needs version 5 (dual_write); `dualwrite fleet forget api-3` if it is gone'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from dualwrite.errors import GuardsFailedError
from dualwrite.phases.facts import (
    Facts,
    InstanceView,
    VerificationView,
    live_instances,
    vanished_instances,
)
from dualwrite.phases.model import Direction, Phase

Guard = Callable[[Facts], "GuardResult"]


@dataclass(frozen=True, slots=True)
class GuardResult:
    name: str
    passed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Every guard of one legal move, passed or not."""

    current: Phase
    target: Phase
    direction: Direction
    guards: tuple[GuardResult, ...]

    @property
    def allowed(self) -> bool:
        """True when every guard passed."""
        return all(g.passed for g in self.guards)

    @property
    def failures(self) -> tuple[GuardResult, ...]:
        return tuple(g for g in self.guards if not g.passed)

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary (for the admin API)."""
        return {
            "current": self.current.value,
            "target": self.target.value,
            "direction": self.direction.value,
            "allowed": self.allowed,
            "guards": [
                {"name": g.name, "passed": g.passed, "reason": g.reason} for g in self.guards
            ],
        }

    def raise_if_refused(self) -> None:
        """Raise ``GuardsFailedError`` (its ``failures``: the failing results) unless allowed."""
        if self.allowed:
            return
        failures = self.failures
        listed = "; ".join(f"{g.name}: {g.reason}" for g in failures)
        raise GuardsFailedError(
            f"cannot move from {self.current} to {self.target}: {listed}", failures
        )


def _ts(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _check(name: str, ok: bool, good: str, bad: str) -> GuardResult:
    return GuardResult(name, ok, good if ok else bad)


# --- fleet guards -----------------------------------------------------------------------------


def fleet_guard(
    name: str, facts: Facts, problem: Callable[[InstanceView], str | None]
) -> GuardResult:
    """Pass unless ``problem`` describes something wrong with a live instance, or with an
    instance that vanished without deregistering and is still within its grace."""
    live = live_instances(facts)
    problems = [p for p in map(problem, live) if p is not None]
    for i, age in vanished_instances(facts):
        found = problem(i)
        if found is not None:
            what = found.removeprefix(i.label).strip()
            problems.append(
                f"instance {i.instance_id} not heard from for {age:.0f}s, may still be writing: "
                f"{what}; `dualwrite fleet forget {i.instance_id}` if it is gone"
            )
    if not live and not problems:
        return GuardResult(name, True, "no live instances")
    if not problems:
        return GuardResult(name, True, f"all {len(live)} live instances are ready")
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return GuardResult(name, False, "; ".join(problems[:3]) + more)


def fleet_observed(phase: Phase) -> Guard:
    """``fleet_observed_<phase>``: every live instance has read this state row version."""

    def guard(facts: Facts) -> GuardResult:
        needs = f"needs version {facts.state_version} ({phase})"

        def problem(i: InstanceView) -> str | None:
            if i.observed_version is None:
                return f"{i.label} has not observed any phase yet, {needs}"
            if i.observed_version < facts.state_version:
                seen = f"{i.observed_version} ({i.observed_phase})"
                return f"{i.label} has observed version {seen}, {needs}"
            return None

        return fleet_guard(f"fleet_observed_{phase}", facts, problem)

    return guard


def fleet_holds_current_key(facts: Facts) -> GuardResult:
    """Every live instance holds ``current_key_version`` (fails when none is configured)."""
    key, name = facts.current_key_version, "fleet_holds_current_key"
    if key is None:
        return GuardResult(name, False, "no current key version is configured")

    def problem(i: InstanceView) -> str | None:
        held = ", ".join(sorted(i.key_versions)) or "no keys"
        return None if key in i.key_versions else f"{i.label} holds {held}, needs {key}"

    return fleet_guard(name, facts, problem)


# --- data guards ------------------------------------------------------------------------------


def blind_indexes_built(f: Facts) -> GuardResult:
    """``blind_indexes_built``: every blind-index index exists and is valid before searches
    read them (``read_switch``); a backfill run with ``--defer-indexes`` drops them and only a
    finished encrypt run builds them again.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> r = blind_indexes_built(Facts(t, 1, t, True, True, "v1",
    ...                               blind_indexes_missing=("ix_t_email_bidx",)))
    >>> r.passed, r.reason.split(" (")[0]
    (False, 'blind-index index ix_t_email_bidx is missing or invalid')
    """
    missing, many = ", ".join(f.blind_indexes_missing), len(f.blind_indexes_missing) > 1
    return _check(
        "blind_indexes_built", not missing, "blind-index indexes are built",
        f"blind-index index{'es' if many else ''} {missing} {'are' if many else 'is'} missing "
        "or invalid (a backfill with --defer-indexes has not finished): run `dualwrite "
        f"backfill --once`, which builds {'them' if many else 'it'}",
    )  # fmt: skip


def schema_expanded(f: Facts) -> GuardResult:
    t = f.guard_trigger
    if not f.schema_expanded and t is not None and t.enabled not in ("A", None):
        bad = f"expand schema is incomplete: trigger {t.name} is not enabled always"
    else:
        bad = "expand schema is missing: run `dualwrite db upgrade`"
    return _check("schema_expanded", f.schema_expanded, "expand schema is present", bad)


_TRIGGER_STATES = {
    "O": "enabled for origin sessions only (writers with session_replication_role = replica "
    "bypass it)",
    "R": "enabled for replica sessions only",
    "D": "disabled",
}


def guard_trigger_enabled(f: Facts) -> GuardResult:
    """``guard_trigger_enabled``: the table's guard trigger exists and is enabled ALWAYS (DESIGN
    §6), so no writer -- replica-role sessions included -- leaves a stale ciphertext behind or
    orphans one with a key change. Every forward move re-checks it: ``ALTER TABLE ... DISABLE
    TRIGGER`` (or a plain ``ENABLE TRIGGER``, origin only) stops the migration.

    >>> from datetime import UTC, datetime
    >>> from dualwrite.phases.facts import TriggerView
    >>> t = datetime(2025, 1, 1, tzinfo=UTC)
    >>> f = Facts(now=t, state_version=1, phase_changed_at=t, schema_expanded=True,
    ...           plaintext_columns_present=True, current_key_version="v1",
    ...           guard_trigger=TriggerView("clients", "dualwrite_stale_guard", "D"))
    >>> print(guard_trigger_enabled(f).reason)
    trigger dualwrite_stale_guard on clients is disabled: run `ALTER TABLE clients ENABLE \
ALWAYS TRIGGER dualwrite_stale_guard`
    """
    t, name = f.guard_trigger, "guard_trigger_enabled"
    if t is None:
        return GuardResult(name, False, "the guard trigger was not inspected")
    which = f"trigger {t.name} on {t.table}"
    if t.enabled == "A":
        return GuardResult(name, True, f"{which} is enabled always")
    if t.enabled is None:
        return GuardResult(
            name, False, f"{which} is missing: re-create it (the expand revision installs it)"
        )
    state = _TRIGGER_STATES.get(t.enabled, f"in state {t.enabled!r}")
    fix = f"ALTER TABLE {t.table} ENABLE ALWAYS TRIGGER {t.name}"
    return GuardResult(name, False, f"{which} is {state}: run `{fix}`")


def coverage_complete(f: Facts) -> GuardResult:
    n = f.rows_missing_ciphertext
    return _check(
        "coverage_complete",
        n == 0,
        "every row with plaintext has ciphertext",
        f"{n} rows still lack ciphertext: run `dualwrite backfill --mode encrypt`",
    )


def _counts(v: VerificationView) -> tuple[bool, str]:
    counts = f"{v.mismatches} mismatches, {v.missing} missing, {v.undecryptable} undecryptable"
    return v.mismatches == v.missing == v.undecryptable == 0, counts


def verification_passed(f: Facts) -> GuardResult:
    """A full verification *started* after the backfill finished and found nothing wrong (one
    that started while the backfill still ran does not count: it may have read rows first)."""
    v, done, name = f.last_verification, f.backfill_finished_at, "verification_passed"
    if done is None:
        return GuardResult(name, False, "the backfill has not finished (no encrypt run ended)")
    if v is None or not v.full:
        return GuardResult(name, False, "no full verification has run: run `dualwrite verify`")
    started = _started_after(name, v, done, "the backfill finished")
    if isinstance(started, GuardResult):
        return started
    ok, counts = _counts(v)
    return GuardResult(name, ok, f"the last full verification ({_ts(started)}): {counts}")


def _started_after(
    name: str, v: VerificationView, after: datetime, what: str
) -> datetime | GuardResult:
    """When verification ``v`` started, if strictly after ``after`` (``what`` happened then);
    otherwise the refusal."""
    if v.started_at is not None and v.started_at > after:
        return v.started_at
    began = "an unknown time" if v.started_at is None else _ts(v.started_at)
    return GuardResult(
        name,
        False,
        f"the last full verification started at {began}, not after {what} ({_ts(after)}): "
        "run `dualwrite verify --full` again",
    )


def fleet_observed_at(f: Facts) -> datetime:
    """When the fleet observed the current phase: the latest ``observed_at`` among the live
    instances at the current version, never before the phase was entered (no live instance:
    ``phase_changed_at``)."""
    seen = [
        i.observed_at
        for i in live_instances(f)
        if i.observed_at is not None
        and i.observed_version is not None
        and i.observed_version >= f.state_version
    ]
    return max([f.phase_changed_at, *seen])


def plaintext_verified(f: Facts) -> GuardResult:
    """``plaintext_verified``: before reads go back to plaintext, a full verification with 0
    mismatches and 0 undecryptable rows started after the fleet observed the current phase
    (every writer writes plaintext again) and after the last decrypt pass finished (DESIGN §5,
    "Rollback"). Missing ciphertexts do not count: the stale guard clears a ciphertext when a
    writer changes the plaintext alone, so there the plaintext is the newer value."""
    name, v = "plaintext_verified", f.last_verification
    if f.decrypt_unfinished:
        return GuardResult(
            name,
            False,
            "a decrypt pass has not finished: run `dualwrite backfill --mode decrypt --once` "
            "to the end",
        )
    after, what = fleet_observed_at(f), "the fleet observed the current phase"
    if f.decrypt_finished_at is not None and f.decrypt_finished_at > after:
        after, what = f.decrypt_finished_at, "the last decrypt pass finished"
    if v is None or not v.full:
        return GuardResult(
            name, False, "no full verification has run: run `dualwrite verify --full`"
        )
    started = _started_after(name, v, after, what)
    if isinstance(started, GuardResult):
        return started
    # a missing ciphertext is fine here: reads go back to the plaintext it was cleared for
    ok, counts = v.mismatches == v.undecryptable == 0, _counts(v)[1]
    fix = "" if ok else ": run `dualwrite verify --full --repair`, then verify again"
    return GuardResult(
        name, ok, f"the last full verification ({_ts(started)}, after {what}): {counts}{fix}"
    )


def latency_gate_passed(phase: Phase) -> Guard:
    """``latency_gate_passed``: a gate passed in ``phase`` after it was entered (if required)."""

    def guard(f: Facts) -> GuardResult:
        g, name = f.last_gate, "latency_gate_passed"
        if not f.require_latency_gate:
            return GuardResult(name, True, "not required (require_latency_gate is off)")
        if g is None or g.phase is not phase or g.finished_at <= f.phase_changed_at:
            last = "none" if g is None else f"{g.phase} at {_ts(g.finished_at)}"
            return GuardResult(
                name,
                False,
                f"no latency gate has run in {phase} since {_ts(f.phase_changed_at)} "
                f"(last: {last})",
            )
        verdict = "passed" if g.passed else "failed"
        return GuardResult(name, g.passed, f"latency gate {verdict} at {_ts(g.finished_at)}")

    return guard


def soak_time(f: Facts) -> GuardResult:
    """The current phase has been held at least ``soak_seconds``."""
    elapsed = max(0.0, (f.now - f.phase_changed_at).total_seconds())
    left = f.soak_seconds - elapsed
    reason = f"soak time: {elapsed:.0f}s of {f.soak_seconds:.0f}s elapsed"
    return GuardResult("soak_time", left <= 0, reason + (f", {left:.0f}s left" if left > 0 else ""))


def no_shadow_mismatches(f: Facts) -> GuardResult:
    n = f.shadow_mismatches_since_switch
    reason = f"{n} shadow-read mismatches since the switch"
    return GuardResult("no_shadow_mismatches", n == 0, reason)


def no_plaintext_fallbacks(f: Facts) -> GuardResult:
    n = f.fallbacks_since_switch
    reason = f"{n} plaintext fallbacks since the switch"
    return GuardResult("no_plaintext_fallbacks", n == 0, reason)


def plaintext_purged(f: Facts) -> GuardResult:
    n = f.rows_with_plaintext
    return _check(
        "plaintext_purged",
        n == 0,
        "no row holds plaintext",
        f"{n} rows still hold plaintext: run `dualwrite backfill --mode purge`",
    )


def plaintext_complete(f: Facts) -> GuardResult:
    n = f.rows_ciphertext_without_plaintext
    return _check(
        "plaintext_complete",
        n == 0,
        "every row with ciphertext has its plaintext",
        f"{n} rows have ciphertext but no plaintext: run `dualwrite backfill --mode decrypt`",
    )


def plaintext_columns_present(f: Facts) -> GuardResult:
    return _check(
        "plaintext_columns_present",
        f.plaintext_columns_present,
        "plaintext columns are present",
        "plaintext columns are absent: run the contract revision's Alembic downgrade first",
    )
