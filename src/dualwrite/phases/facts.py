"""The snapshot the guards judge (pure): fleet heartbeats, results, counts, one clock.

``Facts.now`` is the database clock at the time of the snapshot; nothing here reads a clock.
An instance is *live* while ``now - last_seen < 3 x`` **its own** ``poll_interval_seconds`` (the
operator's ``Facts.poll_interval_seconds`` stands in only for a row too old to report one). An
instance that is no longer live but never deregistered is *vanished*: for a grace period of
:func:`grace_seconds` after its last heartbeat (two liveness windows plus its longest request:
it may be cut off, not dead, and a write it began just before its fence closed may still run)
it still counts for the fleet guards, until ``dualwrite fleet forget`` removes it.

>>> from datetime import UTC, timedelta
>>> t = datetime(2025, 1, 1, 12, tzinfo=UTC)
>>> slow = InstanceView("api-9", None, None, frozenset(), t - timedelta(seconds=20),
...                     poll_interval_seconds=10.0, longest_request_seconds=1.5)
>>> liveness_window_seconds(slow, 2.0), grace_seconds(slow, 2.0)
(30.0, 61.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dualwrite.phases.model import Phase

__all__ = [
    "Facts",
    "GateView",
    "InstanceView",
    "TriggerView",
    "VerificationView",
    "grace_seconds",
    "live_instances",
    "liveness_window_seconds",
    "vanished_instances",
]


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One API instance's latest heartbeat."""

    instance_id: str
    observed_phase: Phase | None
    observed_version: int | None
    key_versions: frozenset[str]
    last_seen: datetime
    host: str = ""
    pid: int = 0
    poll_interval_seconds: float | None = None  # None: an instance too old to report it
    observed_at: datetime | None = None  # when it first reported ``observed_version``
    longest_request_seconds: float | None = None
    recent_p95_ms: float | None = None

    def summary(self) -> dict[str, object]:
        """Who it is and what it observed, JSON-friendly (``status`` and ``fleet list``)."""
        return {
            "instance_id": self.instance_id,
            "host": self.host,
            "pid": self.pid,
            "observed_phase": self.observed_phase.value if self.observed_phase else None,
            "observed_version": self.observed_version,
            "key_versions": sorted(self.key_versions),
        }

    @property
    def label(self) -> str:
        """How reasons name an instance: ``instance api-2 (host h, pid 12)``."""
        parts = [f"host {self.host}"] if self.host else []
        parts += [f"pid {self.pid}"] if self.pid else []
        return f"instance {self.instance_id}" + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True, slots=True)
class VerificationView:
    """The last verification run (``full`` = every row, not a sample)."""

    finished_at: datetime
    full: bool
    mismatches: int
    missing: int
    undecryptable: int
    phase: Phase
    started_at: datetime | None = None  # when the run began (None: unknown, never "after")


@dataclass(frozen=True, slots=True)
class GateView:
    """The last recorded latency-gate run and the phase it ran in."""

    finished_at: datetime
    passed: bool
    phase: Phase


@dataclass(frozen=True, slots=True)
class TriggerView:
    """The guard trigger the table needs now (the stale-ciphertext trigger while the plaintext
    columns exist, the key guard after the contract dropped them) and its ``pg_trigger.tgenabled``:
    ``A`` always, ``O`` origin sessions only, ``R`` replica sessions only, ``D`` disabled,
    ``None`` when it does not exist."""

    table: str
    name: str
    enabled: str | None


@dataclass(frozen=True, slots=True)
class Facts:
    """A snapshot of everything the guards look at (timezone-aware datetimes, one clock)."""

    now: datetime
    state_version: int  # current version of the state row
    phase_changed_at: datetime  # when the current phase was entered
    schema_expanded: bool  # ciphertext columns + stale-ciphertext trigger present
    plaintext_columns_present: bool
    current_key_version: str | None  # the version the fleet must hold
    instances: tuple[InstanceView, ...] = ()
    rows_missing_ciphertext: int = 0  # plaintext present, ciphertext or blind index missing
    rows_ciphertext_without_plaintext: int = 0  # plaintext incomplete
    rows_with_plaintext: int = 0  # plaintext not yet purged
    backfill_finished_at: datetime | None = None  # last encrypt run that found nothing left
    last_verification: VerificationView | None = None
    last_gate: GateView | None = None
    shadow_mismatches_since_switch: int = 0
    fallbacks_since_switch: int = 0
    poll_interval_seconds: float = 2.0
    soak_seconds: float = 300.0
    require_latency_gate: bool = True
    guard_trigger: TriggerView | None = None  # None: not inspected (the guard fails)
    decrypt_finished_at: datetime | None = None  # last decrypt pass that found nothing left
    decrypt_unfinished: bool = False  # a decrypt run committed batches but has not finished
    blind_indexes_missing: tuple[str, ...] = ()  # blind-index indexes missing or INVALID


def liveness_window_seconds(i: InstanceView, fallback_interval: float) -> float:
    """``3 x`` the instance's own poll interval (``fallback_interval`` if it reports none)."""
    interval = i.poll_interval_seconds
    return 3.0 * (interval if interval is not None and interval > 0 else fallback_interval)


def grace_seconds(i: InstanceView, fallback_interval: float) -> float:
    """How long after its last heartbeat a vanished instance still blocks fleet guards."""
    longest = max(0.0, i.longest_request_seconds or 0.0)
    return 2.0 * liveness_window_seconds(i, fallback_interval) + longest


def _age(facts: Facts, i: InstanceView) -> float:
    return (facts.now - i.last_seen).total_seconds()


def live_instances(facts: Facts) -> tuple[InstanceView, ...]:
    """Instances heard from within their own liveness window at ``facts.now``."""
    fallback = facts.poll_interval_seconds
    return tuple(
        i for i in facts.instances if _age(facts, i) < liveness_window_seconds(i, fallback)
    )


def vanished_instances(facts: Facts) -> tuple[tuple[InstanceView, float], ...]:
    """Instances past their liveness window but within their grace, with their age (s)."""
    fallback = facts.poll_interval_seconds
    out = []
    for i in facts.instances:
        age = _age(facts, i)
        if liveness_window_seconds(i, fallback) <= age < grace_seconds(i, fallback):
            out.append((i, age))
    return tuple(out)
