"""Every Prometheus metric of dualwrite, on an injectable registry.

Build one :class:`Metrics` per process (or per test) and pass it around; nothing registers at
import time. Names follow Prometheus conventions (base units, ``_seconds``, ``_total``); labels
never carry row or person ids.

>>> from prometheus_client import CollectorRegistry
>>> m = Metrics(CollectorRegistry())
>>> m.read_fallbacks.labels(migration="clients_pii", field="email").inc()
>>> m.value("dualwrite_read_fallback_total", migration="clients_pii", field="email")
1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_FAST = (0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01)
_HTTP = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PHASES = ("plaintext", "dual_write", "backfill", "read_switch", "contract", "finalized")


class Metrics:
    """The metric families; ``registry`` defaults to a fresh private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.phase = Gauge(
            "dualwrite_phase",
            "1 for the phase this process observes for a migration, else 0",
            ["migration", "phase"],
            registry=r,
        )
        self.phase_version = Gauge(
            "dualwrite_phase_version",
            "State-row version this process observes",
            ["migration"],
            registry=r,
        )
        self.instances = Gauge(
            "dualwrite_instances",
            "Live instances per observed phase (from heartbeats)",
            ["migration", "phase"],
            registry=r,
        )
        self.http_duration = Histogram(
            "dualwrite_http_request_duration_seconds",
            "HTTP request duration by route",
            ["method", "route", "status"],
            buckets=_HTTP,
            registry=r,
        )
        self.crypto_duration = Histogram(
            "dualwrite_crypto_operation_duration_seconds",
            "Field encrypt/decrypt duration",
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
        self.backfill_rows = Counter(
            "dualwrite_backfill_rows_total",
            "Rows processed by the backfiller",
            ["migration", "mode", "outcome"],
            registry=r,
        )
        self.backfill_remaining = Gauge(
            "dualwrite_backfill_rows_remaining",
            "Rows left for the running backfill mode",
            ["migration", "mode"],
            registry=r,
        )
        self.backfill_rate = Gauge(
            "dualwrite_backfill_rows_per_second",
            "Recent backfill throughput",
            ["migration", "mode"],
            registry=r,
        )
        self.backfill_batch_duration = Histogram(
            "dualwrite_backfill_batch_duration_seconds",
            "Backfill batch duration",
            ["migration", "mode"],
            buckets=_BATCH,
            registry=r,
        )
        self.backfill_throttle = Gauge(
            "dualwrite_backfill_throttled",
            "1 while the backfiller is held back, by reason (paused, rate, health)",
            ["migration", "reason"],
            registry=r,
        )
        self.verify_rows = Counter(
            "dualwrite_verify_rows_total",
            "Rows checked by the verifier",
            ["migration"],
            registry=r,
        )
        self.verify_mismatches = Counter(
            "dualwrite_verify_mismatches_total",
            "Verifier findings by kind (missing, mismatched, undecryptable)",
            ["migration", "field", "kind"],
            registry=r,
        )
        self.key_expiry = Gauge(
            "dualwrite_key_expiry_timestamp_seconds",
            "Expiry time of each data key version",
            ["version"],
            registry=r,
        )
        self.key_current = Gauge(
            "dualwrite_key_current",
            "1 for the key version used to encrypt",
            ["version"],
            registry=r,
        )

    def set_phase(self, migration: str, phase: str, version: int) -> None:
        """Mark ``phase`` as the one observed (one-hot over all phases)."""
        for p in PHASES:
            self.phase.labels(migration=migration, phase=p).set(1.0 if p == phase else 0.0)
        self.phase_version.labels(migration=migration).set(version)

    def value(self, name: str, **labels: str) -> float | None:
        """Read a sample back (tests, status screens). ``None`` when absent."""
        return self.registry.get_sample_value(name, labels)

    def exposition(self) -> bytes:
        """The text exposition format for a ``/metrics`` route."""
        return generate_latest(self.registry)
