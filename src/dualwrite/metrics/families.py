"""Every Prometheus metric family of dualwrite, on an injectable registry.

Build one :class:`Metrics` per process (or per test) and pass it around; nothing registers at
import time. Names follow Prometheus conventions (base units, ``_seconds``, ``_total``); labels
never carry row or person ids, and no value is ever plaintext, key or token material.

Every gauge names how several worker processes of one instance combine
(``multiprocess_mode``, used only in multiprocess mode, see :mod:`dualwrite.metrics.multiprocess`):
``live*`` modes so that a dead worker's values disappear once it is marked dead, ``max`` for a
fact every worker reads from the same database, ``min`` for "the oldest any worker observes",
``sum`` for throughput, ``mostrecent`` for a value refreshed from the database on a cadence.

>>> from prometheus_client import CollectorRegistry
>>> m = Metrics(CollectorRegistry())
>>> m.read_fallbacks.labels(migration="clients_pii", field="email").inc()
>>> m.value("dualwrite_read_fallback_total", migration="clients_pii", field="email")
1.0
>>> m.set_phase("clients_pii", "backfill", 3)
>>> m.value("dualwrite_phase", migration="clients_pii", phase="backfill")
1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dualwrite.metrics import multiprocess
from dualwrite.metrics.latency import LoopLag, RecentLatency

if TYPE_CHECKING:
    from dualwrite.crypto import Keyring

_FAST = (0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Request-duration buckets; the latency targets (0.1 s, 1 s) are bucket bounds, so
``histogram_quantile(0.95, ...) > target`` is exact (no interpolation across the target)."""
_BATCH = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PHASES = ("plaintext", "dual_write", "backfill", "read_switch", "contract", "finalized")
GaugeMode = Literal["livemin", "livemax", "livesum", "livemostrecent"]
"""The aggregation modes dualwrite's gauges use (all ``live*``: a dead worker's value goes)."""


class Metrics:
    """The metric families; ``registry`` defaults to a fresh private registry.

    In multiprocess mode build exactly one per process: two instances in one process would
    share (and overwrite) the same per-process value files.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # not a Prometheus family: the p95 of the last seconds, for the heartbeat
        self.recent_latency = RecentLatency()
        self.loop_lag = LoopLag()  # probed by the app (see dualwrite.metrics.latency)

        def gauge(name: str, doc: str, labels: list[str], mode: GaugeMode) -> Gauge:
            return Gauge(name, doc, labels, registry=r, multiprocess_mode=mode)

        # --- phase and fleet (API instances) ---------------------------------------------
        self.phase = gauge(
            "dualwrite_phase",
            "1 for the phase this process observes for a migration, else 0",
            ["migration", "phase"],
            "livemax",
        )
        self.phase_version = gauge(
            "dualwrite_phase_version",
            "State-row version this process observes (the oldest of its workers)",
            ["migration"],
            "livemin",
        )
        self.phase_changed = gauge(
            "dualwrite_phase_changed_timestamp_seconds",
            "When the migration entered its current phase (state row, database clock)",
            ["migration"],
            "livemostrecent",
        )
        self.instances = gauge(
            "dualwrite_instances",
            "Live instances per observed phase (from heartbeats)",
            ["migration", "phase"],
            "livemostrecent",
        )
        self.instances_behind = gauge(
            "dualwrite_instances_behind",
            "Live instances that have not observed the current state-row version",
            ["migration"],
            "livemostrecent",
        )
        # --- requests and crypto ---------------------------------------------------------
        self.http_duration = Histogram(
            "dualwrite_http_request_duration_seconds",
            "HTTP request duration by route template",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.crypto_duration = Histogram(
            "dualwrite_crypto_operation_duration_seconds",
            "Field encrypt/decrypt duration per row (sampled: 1 in 8 single rows, 1 per bulk read)",
            ["operation"],
            buckets=_FAST,
            registry=r,
        )
        self.crypto_failures = Counter(
            "dualwrite_crypto_failures_total",
            "Encrypt/decrypt failures",
            ["operation", "migration", "field"],
            registry=r,
        )
        self.read_fallbacks = Counter(
            "dualwrite_read_fallback_total",
            "Reads served from plaintext because the ciphertext was missing",
            ["migration", "field"],
            registry=r,
        )
        self.shadow_reads = Counter(
            "dualwrite_shadow_reads_total",
            "Sampled reads compared against the other source",
            ["migration"],
            registry=r,
        )
        self.shadow_mismatches = Counter(
            "dualwrite_shadow_read_mismatches_total",
            "Sampled reads whose ciphertext and plaintext disagree",
            ["migration", "field"],
            registry=r,
        )
        # --- backfill (backfill workers) -------------------------------------------------
        self.backfill_rows = Counter(
            "dualwrite_backfill_rows_total",
            "Rows processed by the backfiller",
            ["migration", "mode", "outcome"],
            registry=r,
        )
        self.backfill_remaining = gauge(
            "dualwrite_backfill_rows_remaining",
            "Rows left for the running backfill mode (the lowest any worker counts)",
            ["migration", "mode"],
            "livemin",
        )
        self.table_rows = gauge(
            "dualwrite_table_rows",
            "Rows in the migration's table, counted by the backfiller at the start of each pass",
            ["migration"],
            "livemax",
        )
        self.backfill_rate = gauge(
            "dualwrite_backfill_rows_per_second",
            "Recent backfill throughput (all workers together)",
            ["migration", "mode"],
            "livesum",
        )
        self.backfill_batch_duration = Histogram(
            "dualwrite_backfill_batch_duration_seconds",
            "Backfill batch duration",
            ["migration", "mode"],
            buckets=_BATCH,
            registry=r,
        )
        self.backfill_throttle = gauge(
            "dualwrite_backfill_throttled",
            "1 while the backfiller is held back, by reason (paused, rate, health, latency)",
            ["migration", "reason"],
            "livemax",
        )
        self.backfill_latency = gauge(
            "dualwrite_backfill_latency_seconds",
            "The backfill's live-latency budget and the fleet p95 it last read (kind; -1: none)",
            ["migration", "kind"],
            "livemax",
        )
        # --- verification and gate ---------------------------------------------------------
        self.verify_rows = Counter(
            "dualwrite_verify_rows_total",
            "Rows checked by the verifier (in this process)",
            ["migration"],
            registry=r,
        )
        self.verify_mismatches = Counter(
            "dualwrite_verify_mismatches_total",
            "Verifier findings by kind (missing, mismatched, undecryptable), in this process",
            ["migration", "field", "kind"],
            registry=r,
        )
        self.verification_findings = gauge(
            "dualwrite_verification_findings",
            "Findings of the latest full verification, by kind (from the database)",
            ["migration", "kind"],
            "livemostrecent",
        )
        self.verification_time = gauge(
            "dualwrite_verification_timestamp_seconds",
            "When the latest full verification finished (from the database)",
            ["migration"],
            "livemostrecent",
        )
        self.gate_passed = gauge(
            "dualwrite_latency_gate_passed",
            "1 if the latest recorded latency-gate verdict passed, 0 if it failed",
            ["migration"],
            "livemostrecent",
        )
        self.gate_time = gauge(
            "dualwrite_latency_gate_timestamp_seconds",
            "When the latest latency-gate verdict was recorded (from the database)",
            ["migration"],
            "livemostrecent",
        )
        # --- keys --------------------------------------------------------------------------
        self.key_expiry = gauge(
            "dualwrite_key_expiry_timestamp_seconds",
            "Expiry time of each data key version this process holds",
            ["version"],
            "livemin",
        )
        self.key_current = gauge(
            "dualwrite_key_current",
            "1 for the key version used to encrypt",
            ["version"],
            "livemax",
        )

    def set_phase(self, migration: str, phase: str, version: int) -> None:
        """Mark ``phase`` as the one observed (one-hot over all phases)."""
        for p in PHASES:
            self.phase.labels(migration=migration, phase=p).set(1.0 if p == phase else 0.0)
        self.phase_version.labels(migration=migration).set(version)

    def set_keyring(self, keyring: Keyring) -> None:
        """Export each key version's expiry and which one encrypts (never key material)."""
        for key in keyring:
            self.key_expiry.labels(version=key.version).set(key.expires_at.timestamp())
            current = 1.0 if key.version == keyring.current.version else 0.0
            self.key_current.labels(version=key.version).set(current)

    def value(self, name: str, **labels: str) -> float | None:
        """Read a sample back (tests, status screens). ``None`` when absent."""
        return self.registry.get_sample_value(name, labels)

    def exposition(self) -> bytes:
        """The text exposition format for a ``/metrics`` route: this registry, or in
        multiprocess mode the aggregate of every worker process of the instance."""
        return multiprocess.exposition(self.registry)
