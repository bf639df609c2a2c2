"""The backfill's latency budget with a fake latency source and a fake clock: it slows down,
pauses and resumes as the fleet's p95 moves (no timing, no database)."""

from __future__ import annotations

import asyncio
from typing import Any

from dualwrite.backfill.latency import LatencyGuard, LatencyPolicy, LatencyThrottle
from dualwrite.backfill.options import BackfillOptions
from dualwrite.metrics import Metrics
from dualwrite.metrics.latency import RecentLatency
from dualwrite.phases import BackfillMode


def test_budget_is_a_factor_of_the_baseline_or_the_target() -> None:
    assert LatencyThrottle(LatencyPolicy(), baseline_ms=12.0).budget_ms == 18.0
    assert LatencyThrottle(LatencyPolicy(target_ms=50), baseline_ms=12.0).budget_ms == 50.0
    assert LatencyThrottle(LatencyPolicy(), baseline_ms=None).budget_ms is None
    assert LatencyThrottle(LatencyPolicy(factor=0), baseline_ms=12.0).budget_ms is None
    default = BackfillOptions(mode=BackfillMode.ENCRYPT)
    assert (default.latency_factor, default.latency_target_ms) == (1.5, 0.0)


def test_over_budget_slows_then_pauses_and_within_budget_resumes() -> None:
    t = LatencyThrottle(LatencyPolicy(min_delay=0.05, max_delay=0.4), baseline_ms=10.0)
    states = [(d.state, d.wait) for d in map(t.decide, [14.0, 16.0, 16.0, 16.0, 16.0, 30.0])]
    assert states == [
        ("running", 0.0),
        ("slowed", 0.05),
        ("slowed", 0.1),
        ("slowed", 0.2),
        ("paused", 0.4),
        ("paused", 0.4),
    ]
    assert t.last.reason == "fleet p95 30.0 ms > budget 15.0 ms"
    resumed = [(d.state, d.wait) for d in map(t.decide, [9.0] * 5)]
    assert resumed == [
        ("slowed", 0.2),
        ("slowed", 0.1),
        ("slowed", 0.05),
        ("running", 0.0),
        ("running", 0.0),
    ]
    assert t.last.reason is None


def test_no_report_is_no_throttle() -> None:
    t = LatencyThrottle(LatencyPolicy(), baseline_ms=10.0)
    assert t.decide(100.0).wait > 0
    assert t.decide(None) == t.last and t.last.wait == 0.0 and t.last.state == "running"


class FakeSource:
    def __init__(self, values: list[float | None]) -> None:
        self.values = values
        self.reads = 0

    async def __call__(self, conn: Any) -> float | None:
        value = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        return value


def test_guard_holds_reports_and_resumes() -> None:
    # baseline 20 -> budget 30; then slow, slow, over at the cap (paused), then healthy
    source = FakeSource([20.0, 40.0, 45.0, 50.0, 50.0, 10.0, 10.0, 10.0, 10.0])
    now = [0.0]
    events: list[tuple[str, dict[str, Any]]] = []
    held: list[tuple[str, float]] = []
    metrics = Metrics()
    guard = LatencyGuard(
        "m",
        LatencyPolicy(min_delay=0.5, max_delay=2.0, check_every=1.0),
        metrics=metrics,
        on_event=lambda name, **f: events.append((name, f)),
        clock=lambda: now[0],
        source=source,
    )

    async def hold(why: str, seconds: float) -> bool:
        held.append((why, seconds))
        now[0] += seconds
        return False

    async def batches(n: int) -> None:
        for _ in range(n):
            await guard.before_batch(None, hold)
            now[0] += 0.6  # a batch

    asyncio.run(batches(12))
    assert events[0] == ("latency_budget", {"budget_ms": 30.0, "baseline_p95_ms": 20.0})
    states = [f["state"] for name, f in events if name == "latency"]
    assert states == ["slowed", "paused", "slowed", "running"]
    assert {why for why, _ in held} == {"latency"}
    waits = [s for _, s in held]
    assert waits[:4] == [0.5, 1.0, 2.0, 2.0] and 2.0 not in waits[5:]
    assert guard.throttle is not None and guard.throttle.last.state == "running"
    assert metrics.value("dualwrite_backfill_latency_seconds", migration="m", kind="budget") == 0.03
    assert (
        metrics.value("dualwrite_backfill_latency_seconds", migration="m", kind="fleet_p95") == 0.01
    )
    reasons = [f["reason"] for name, f in events if name == "latency" and f["state"] == "paused"]
    assert reasons == ["fleet p95 50.0 ms > budget 30.0 ms"]


def test_guard_without_budget_never_holds() -> None:
    source = FakeSource([None, 500.0])
    held: list[tuple[str, float]] = []

    async def hold(why: str, seconds: float) -> bool:
        held.append((why, seconds))
        return False

    async def run() -> None:
        guard = LatencyGuard("m", LatencyPolicy(), source=source, clock=lambda: 0.0)
        for _ in range(3):
            await guard.before_batch(None, hold)

    asyncio.run(run())
    assert held == [] and source.reads == 1  # no budget: the source is not polled again


def test_recent_latency_window_forgets_old_requests() -> None:
    now = [0.0]
    w = RecentLatency(window_seconds=5, clock=lambda: now[0])
    for _ in range(50):
        w.add(0.5)
    now[0] = 3.0
    for _ in range(50):
        w.add(0.010)
    assert w.p95_ms() == 500.0
    now[0] = 6.0  # the slow ones are older than the window
    assert w.p95_ms() == 10.0
