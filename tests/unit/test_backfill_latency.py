"""The backfill's latency budget with a fake latency source and a fake clock: it slows down,
pauses and resumes as the fleet's p95 moves (no timing, no database); the figure it reads
counts the event loop's lag."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from clients_service.app import RequestEdge
from dualwrite.backfill.latency import LatencyGuard, LatencyPolicy, LatencyThrottle
from dualwrite.backfill.options import BackfillOptions
from dualwrite.metrics import Metrics
from dualwrite.metrics.latency import LoopLag, RecentLatency
from dualwrite.phases import BackfillMode


def test_budget_is_a_factor_of_the_baseline_or_the_target() -> None:
    assert LatencyThrottle(LatencyPolicy(), baseline_ms=12.0).budget_ms == 18.0
    assert LatencyThrottle(LatencyPolicy(target_ms=50), baseline_ms=12.0).budget_ms == 50.0
    assert LatencyThrottle(LatencyPolicy(), baseline_ms=None).budget_ms is None
    assert LatencyThrottle(LatencyPolicy(factor=0), baseline_ms=12.0).budget_ms is None
    default = BackfillOptions(mode=BackfillMode.ENCRYPT)
    assert (default.latency_factor, default.latency_target_ms) == (1.5, 0.0)


def test_over_budget_slows_then_pauses_and_within_budget_resumes() -> None:
    # 13 ms: 0.87 of the budget of 15, under slow_above (0.9 here)
    policy = LatencyPolicy(min_delay=0.05, max_delay=0.4, slow_above=0.9, resume_below=0.8)
    t = LatencyThrottle(policy, baseline_ms=10.0)
    states = [(d.state, d.wait) for d in map(t.decide, [13.0, 16.0, 16.0, 16.0, 16.0, 30.0])]
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


def test_it_slows_before_the_budget_is_crossed_by_default() -> None:
    # a p95 over the last seconds that reaches the budget has already failed it for them
    # the throttle acts on p95s of 5 s windows, which swing; the budget is about the p95 of the
    # whole run, so each window is held under 3/4 of it (slow_above 0.75, resume_below 0.6)
    t = LatencyThrottle(LatencyPolicy(), baseline_ms=10.0)  # budget 15 ms
    assert t.decide(11.2).state == "running"  # under 0.75 of the budget
    near = t.decide(12.0)
    assert (near.state, near.wait) == ("slowed", 0.2)  # the first wait: about one batch
    assert near.reason == "fleet p95 12.0 ms near budget 15.0 ms"
    held = t.decide(10.0)  # between 0.6 and 0.75 of the budget: the pace is kept
    assert (held.state, held.wait) == ("slowed", 0.2)
    back = t.decide(8.9)  # under 0.6: released
    assert (back.state, back.wait) == ("running", 0.0)


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


def test_per_route_budgets_the_route_furthest_over_decides() -> None:
    """The overall p95 follows the bulk reads; single reads slowing 3x must still hold."""
    base = {"GET /one": 10.0, "GET /bulk": 100.0}
    t = LatencyThrottle(LatencyPolicy(min_delay=0.1, max_delay=0.4), baseline_ms=base)
    assert t.budgets == {"GET /one": 15.0, "GET /bulk": 150.0} and t.budget_ms == 15.0
    d = t.decide({"GET /one": 30.0, "GET /bulk": 110.0})
    assert (d.state, d.route, d.p95_ms, d.budget_ms) == ("slowed", "GET /one", 30.0, 15.0)
    assert d.reason == "GET /one p95 30.0 ms > budget 15.0 ms"
    # both over: the larger ratio names the route (bulk 2x beats single 1.2x)
    assert t.decide({"GET /one": 18.0, "GET /bulk": 300.0}).route == "GET /bulk"
    # a route without a baseline of its own is held to the overall budget, if there is one
    assert t.decide({"GET /new": 1000.0, "GET /one": 1.0}).route == "GET /one"
    mixed = LatencyThrottle(LatencyPolicy(), baseline_ms={"*": 20.0, "GET /one": 10.0})
    assert mixed.decide({"GET /new": 40.0}).reason == "GET /new p95 40.0 ms > budget 30.0 ms"
    # an absolute target holds every route to it
    target = LatencyThrottle(LatencyPolicy(target_ms=50.0), baseline_ms=base)
    assert target.decide({"GET /one": 30.0, "GET /bulk": 60.0}).route == "GET /bulk"
    assert target.decide({"GET /one": 29.0, "GET /bulk": 25.0}).state == "running"


def test_per_route_throttle_resumes_once_every_route_is_back() -> None:
    policy = LatencyPolicy(min_delay=0.1, max_delay=0.2, slow_above=0.9, resume_below=0.8)
    t = LatencyThrottle(policy, {"a": 10.0, "b": 10.0})
    over = [t.decide({"a": 20.0, "b": 5.0}).state for _ in range(3)]
    assert over == ["slowed", "paused", "paused"]
    # b within its budget of 15 but above 0.8 of it: the pace is kept, not released
    near = [t.decide({"a": 5.0, "b": 14.0}) for _ in range(3)]
    assert {(d.state, d.wait) for d in near} == {("paused", 0.2)} and near[-1].reason
    back = [t.decide({"a": 5.0, "b": 11.0}).state for _ in range(3)]
    assert back == ["slowed", "running", "running"] and t.last.reason is None


def test_recent_latency_by_route() -> None:
    now = [0.0]
    w = RecentLatency(window_seconds=5, clock=lambda: now[0])
    for ms in range(1, 41):
        w.add(ms / 1000, "GET /one")
    w.add(0.2, "GET /bulk")
    assert w.by_route() == {
        "GET /bulk": {"p95_ms": 200.0, "n": 1},
        "GET /one": {"p95_ms": 38.0, "n": 40},
    }
    now[0] = 6.0
    assert w.by_route() == {}


def test_progress_line_carries_the_throttle_reason() -> None:
    from dualwrite.backfill.progress import Progress

    line = Progress("m", "encrypt", 0, 10, 0, 90, 5.0, "throttled", "fleet p95 9 ms > 6 ms")
    assert line.as_dict()["reason"] == "fleet p95 9 ms > 6 ms"
    assert "reason" not in Progress("m", "encrypt", 0, 10, 0, 90, 5.0).as_dict()


async def test_the_heartbeat_figure_counts_the_loop_lag_the_app_did_not_see() -> None:
    """A request that waited for a busy loop before the app saw it: the recent latency (what
    the budget reads) counts the wait; the Prometheus histogram keeps the time in the app."""

    async def one(_: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    metrics = Metrics()
    app = RequestEdge(Starlette(routes=[Route("/one", one)]), metrics, max_body_bytes=1024)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        assert (await client.get("/one")).status_code == 200
        quiet = metrics.recent_latency.p95_ms()
        metrics.loop_lag.seconds = 0.25  # the probe found the loop 250 ms late
        for _ in range(20):
            assert (await client.get("/one")).status_code == 200
    assert quiet is not None and quiet < 250
    assert (metrics.recent_latency.by_route()["GET /one"]["p95_ms"]) >= 250
    hist = metrics.value("dualwrite_http_request_duration_seconds_sum", method="GET",
                         route="/one", status="200")  # fmt: skip
    assert hist is not None and hist < 0.25 * 21


async def test_the_loop_lag_probe_sees_a_blocked_loop() -> None:
    lag = LoopLag(interval=0.005)
    probe = asyncio.create_task(lag.run())
    await asyncio.sleep(0.03)
    time.sleep(0.1)  # a handler that blocks the loop for 100 ms
    await asyncio.sleep(0.03)
    probe.cancel()
    assert lag.worst >= 0.09  # the probe was due during the block and ran after it
