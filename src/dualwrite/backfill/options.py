"""What a backfill run is asked to do (``BackfillOptions``) and what it did (``BackfillReport``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dualwrite.phases import BackfillMode

__all__ = ["MAX_REPORTED_FAILURES", "BackfillOptions", "BackfillReport"]

MAX_REPORTED_FAILURES = 1000


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    mode: BackfillMode
    batch_size: int = 1000
    max_rows_per_second: float = 0.0
    sleep_ratio: float = 0.0
    once: bool = True
    dry_run: bool = False
    shard: int = 0
    poll_seconds: float = 2.0
    max_active_backends: int = 0
    max_replication_lag_seconds: float = 0.0
    health_every_seconds: float = 1.0
    retry_for_seconds: float = 300.0  # give up after the database stayed away this long
    pipeline_depth: int = 2  # batches in flight, one connection each (see backfill_pass)
    # the live-latency budget (backfill.latency): target_ms > 0, else factor x the fleet p95
    # before the start (factor 0: no budget); the fleet p95 from the heartbeats or this URL
    latency_factor: float = 1.5
    latency_target_ms: float = 0.0
    latency_prometheus_url: str = ""
    latency_check_seconds: float = 1.0
    # drop the blind-index indexes for an encrypt pass, rebuild them after (backfill.indexes)
    defer_indexes: bool = False


@dataclass(slots=True)
class BackfillReport:
    migration: str
    mode: str
    shard: int
    run_id: str = ""
    rows_done: int = 0  # rows written by this run (all passes, all restarts)
    rows_failed: int = 0  # rows skipped because a value did not decrypt / did not match
    failed_pks: list[str] = field(default_factory=list)  # primary keys only, first 1000
    rows_unchanged: int = 0  # matched but nothing writable (e.g. a value without blind index)
    remaining: int = 0
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    stopped: str = ""  # finished | signal | phase_changed | dry_run

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}
