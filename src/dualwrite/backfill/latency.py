"""The latency budget: the backfill slows down, then pauses, while live requests are slow.

The budget is an absolute target (``latency_target_ms``) or ``latency_factor`` (1.5) times the
p95 the fleet reported just before the backfill started, **per route**: each API instance
heartbeats its recent p95 of every route (``dualwrite_instances.recent_latency``, from
:class:`~dualwrite.metrics.latency.RecentLatency`), so a backfill that slows the cheap single
reads is caught even when bulk reads dominate the overall p95. An instance of an older
dualwrite reports one overall figure (``recent_p95_ms``), read as the route ``*``; a Prometheus
query returning milliseconds is one figure as well. Before each batch (at most every
``check_every`` seconds) the backfiller reads the figures and :class:`LatencyThrottle`
decides (pure, no clock, no I/O) on the route furthest over its budget:

* over ``slow_above`` (0.75) of the budget: wait before the next batch, the wait doubling per
  check from ``min_delay`` (0.2 s, about one batch: the rate halves) (slowed); once at
  ``max_delay`` and still over, hold every batch (paused). Acting at the budget itself would be
  late: the figure is a p95 over the last seconds, so by the time it crosses, the budget already
  failed for those seconds; and the budget is about the p95 of the whole backfill as a client
  sees it, which a few swinging windows lift above the windows' typical p95 (measured with
  ``loadtests/bench.py all``: held at 0.9 of the budget, the windows' median stayed inside it
  while the whole run's p95 did not), so each window is kept well under it;
* between ``resume_below`` (0.6) and ``slow_above``: keep the wait (a backfill that sped up
  at once would push the p95 straight back over: the budget would be kept only on average);
* below that: the wait halves per check until it is gone (resumed).

The figures include the event loop's lag at each request's start (the wait before the app saw
the request, :class:`~dualwrite.metrics.latency.LoopLag`), so the budget counts the queueing a
backfill sharing the CPU adds, not only the time in the app.

>>> t = LatencyThrottle(LatencyPolicy(min_delay=0.1, max_delay=0.4), baseline_ms=20.0)
>>> t.budget_ms
30.0
>>> [(d.state, d.wait) for d in map(t.decide, [22.0, 40.0, 40.0, 40.0, 20.0, 15.0, 15.0, 15.0])]
... # doctest: +NORMALIZE_WHITESPACE
[('running', 0.0), ('slowed', 0.1), ('slowed', 0.2), ('paused', 0.4), ('paused', 0.4),
 ('slowed', 0.2), ('slowed', 0.1), ('running', 0.0)]
>>> t.decide(45.0).reason
'fleet p95 45.0 ms > budget 30.0 ms'

Per route, the route furthest over its own budget decides:

>>> r = LatencyThrottle(LatencyPolicy(), baseline_ms={"GET /one": 10.0, "GET /bulk": 40.0})
>>> r.budgets
{'GET /one': 15.0, 'GET /bulk': 60.0}
>>> r.decide({"GET /one": 18.0, "GET /bulk": 45.0}).reason
'GET /one p95 18.0 ms > budget 15.0 ms'
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from dualwrite.metrics.latency import ANY_ROUTE
from dualwrite.state import checkpoints

__all__ = [
    "FLEET_LATENCY_SQL",
    "MIN_ROUTE_SAMPLES",
    "LatencyDecision",
    "LatencyGuard",
    "LatencyPolicy",
    "LatencyThrottle",
    "fleet_latency",
    "prometheus_p95",
]

Figures = float | Mapping[str, float] | None
"""What a latency source reads: one p95 in milliseconds, a p95 per route, or nothing."""


@dataclass(frozen=True, slots=True)
class LatencyPolicy:
    """``target_ms`` > 0 is an absolute budget; otherwise ``factor`` x the baseline p95."""

    factor: float = 1.5
    target_ms: float = 0.0
    min_delay: float = 0.2  # the first wait: about one batch's time, the rate halves
    max_delay: float = 2.0
    check_every: float = 1.0
    resume_below: float = 0.6  # of the budget: between it and slow_above the wait is kept
    slow_above: float = 0.75  # of the budget: slow down before the budget is crossed


@dataclass(frozen=True, slots=True)
class LatencyDecision:
    state: str  # running | slowed | paused
    wait: float  # seconds to hold before the next batch
    reason: str | None  # why, when held (never a value from a row)
    route: str | None = None  # the route that decided (its p95 and budget below)
    p95_ms: float | None = None
    budget_ms: float | None = None


def _per_route(figures: Figures) -> dict[str, float]:
    if figures is None:
        return {}
    if isinstance(figures, int | float):
        return {ANY_ROUTE: float(figures)}
    return {route: float(v) for route, v in figures.items() if v is not None and v > 0}


class LatencyThrottle:
    """The decision of :mod:`the module <dualwrite.backfill.latency>` (pure)."""

    def __init__(self, policy: LatencyPolicy, baseline_ms: Figures) -> None:
        self.policy = policy
        self.baseline = _per_route(baseline_ms)
        self.budgets: dict[str, float] = {}
        if policy.target_ms <= 0 and policy.factor > 0:
            self.budgets = {r: round(v * policy.factor, 3) for r, v in self.baseline.items()}
        self._delay = 0.0
        self.last = LatencyDecision("running", 0.0, None)

    @property
    def budget_ms(self) -> float | None:
        """The one budget (the target, or the overall route's), the tightest route's budget
        when there are only routes, ``None`` when there is nothing to protect."""
        if self.policy.target_ms > 0:
            return self.policy.target_ms
        if ANY_ROUTE in self.budgets:
            return self.budgets[ANY_ROUTE]
        return min(self.budgets.values(), default=None)

    def _budget(self, route: str) -> float | None:
        if self.policy.target_ms > 0:
            return self.policy.target_ms
        return self.budgets.get(route, self.budgets.get(ANY_ROUTE))  # new route: the overall

    def decide(self, p95_ms: Figures) -> LatencyDecision:
        """The decision for the fleet's current figures (``None``: nobody reported one)."""
        p = self.policy
        worst: tuple[float, str, float, float] | None = None  # ratio, route, p95, budget
        for route, value in sorted(_per_route(p95_ms).items()):
            budget = self._budget(route)
            if budget is not None and (worst is None or value / budget > worst[0]):
                worst = (value / budget, route, value, budget)
        if self.budget_ms is None or worst is None:
            self._delay = 0.0
            self.last = LatencyDecision("running", 0.0, None)
            return self.last
        _, route, value, budget = worst
        name = "fleet" if route == ANY_ROUTE else route
        if value > budget * p.slow_above:  # a p95 that reaches the budget has already failed it
            self._delay = min(p.max_delay, max(p.min_delay, self._delay * 2))
            state = "paused" if self._delay >= p.max_delay else "slowed"
            over = ">" if value > budget else "near"
            why = f"{name} p95 {value:.1f} ms {over} budget {budget:.1f} ms"
        elif value > budget * p.resume_below:  # close to the budget: hold the pace
            state = self.last.state if self._delay else "running"
            why = self.last.reason or f"{name} p95 {value:.1f} ms near budget {budget:.1f} ms"
        else:
            half = self._delay / 2
            self._delay = half if half >= p.min_delay else 0.0
            state = "slowed" if self._delay else "running"
            why = f"{name} p95 {value:.1f} ms back within budget {budget:.1f} ms"
        self.last = LatencyDecision(
            state, round(self._delay, 6), why if self._delay else None, route, value, budget
        )
        return self.last


MIN_ROUTE_SAMPLES = 20
"""A route counts once the fleet served it this many times in the window (a p95 of three
requests is noise)."""

FLEET_LATENCY_SQL = """
SELECT r.key, max((r.value->>'p95_ms')::float8), sum((r.value->>'n')::bigint)
  FROM dualwrite_instances i,
       jsonb_each(coalesce(nullif(to_jsonb(i) -> 'recent_latency', 'null'), CASE WHEN
           i.recent_p95_ms IS NOT NULL THEN jsonb_build_object('*', jsonb_build_object(
           'p95_ms', i.recent_p95_ms)) END)) r
 WHERE i.migration = $1 AND i.role = 'api'
   AND i.last_seen > clock_timestamp() - make_interval(secs => $2)
 GROUP BY r.key
"""
"""Per route, the worst recent p95 of the API instances that heartbeated in the last ``$2``
seconds and how many requests they served (NULL for an older instance's overall figure).
``to_jsonb(i)``: state tables before revision 4 have no ``recent_latency`` column."""


async def fleet_latency(
    conn: Any, migration: str, fresh_seconds: float = 10.0, min_samples: int = MIN_ROUTE_SAMPLES
) -> dict[str, float] | None:
    """:data:`FLEET_LATENCY_SQL` on an asyncpg connection: route -> p95 in milliseconds of
    the routes with at least ``min_samples`` requests, ``None`` when there are none."""
    rows = await conn.fetch(FLEET_LATENCY_SQL, migration, float(fresh_seconds))
    out = {
        str(key): float(p95)
        for key, p95, n in rows
        if p95 is not None and (n is None or n >= min_samples)
    }
    return out or None


def prometheus_p95(url: str, get: Callable[[str], Awaitable[str]]) -> Callable[[], Any]:
    """A source reading an instant-query URL whose first sample is the p95 in milliseconds
    (e.g. ``1000 * histogram_quantile(0.95, sum by (le) (rate(...[1m])))``); ``get`` fetches
    the body. An answer without a finite number is ``None`` (no data, not a throttle).

    >>> import asyncio
    >>> async def body(_: str) -> str:
    ...     return '{"status":"success","data":{"result":[{"value":[1.0,"41.5"]}]}}'
    >>> asyncio.run(prometheus_p95("http://prom/q", body)())
    41.5
    """

    async def read() -> float | None:
        try:
            doc = json.loads(await get(url))
            value = float(doc["data"]["result"][0]["value"][1])
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return value if value == value and value not in (float("inf"), float("-inf")) else None

    return read


class LatencyGuard:
    """The budget as the backfiller runs it: reads the source (the fleet's heartbeats, or
    ``prometheus_url``) at most every ``check_every`` seconds before a batch, holds as
    :class:`LatencyThrottle` decides, and reports the reason (progress event, gauges)."""

    def __init__(
        self,
        migration: str,
        policy: LatencyPolicy,
        *,
        prometheus_url: str = "",
        metrics: Any = None,
        on_event: Callable[..., None] = lambda name, **fields: None,
        clock: Callable[[], float] | None = None,
        source: Callable[[Any], Awaitable[Figures]] | None = None,
        on_change: Callable[[Any, LatencyDecision], Awaitable[None]] | None = None,
    ) -> None:
        self.migration, self.policy, self.metrics = migration, policy, metrics
        self._url_source = prometheus_url and prometheus_p95(prometheus_url, _http_get)
        self._on_event = on_event
        self._clock = clock or time.monotonic
        self._next = 0.0
        self.throttle: LatencyThrottle | None = None
        self._source = source
        self._on_change = on_change or _nothing

    @property
    def reason(self) -> str | None:
        """Why the budget holds the backfill back right now (``None``: it does not)."""
        return self.throttle.last.reason if self.throttle is not None else None

    async def read(self, conn: Any) -> Figures:
        if self._source is not None:
            return await self._source(conn)
        if self._url_source:
            return await self._url_source()  # type: ignore[no-any-return]
        return await fleet_latency(conn, self.migration)

    async def before_batch(self, conn: Any, hold: Callable[[str, float], Awaitable[bool]]) -> None:
        """Hold (reason ``latency``) as long as the decision says; the first call reads the
        baseline that sets the budget."""
        if self.throttle is None:
            baseline = await self.read(conn)
            self.throttle = LatencyThrottle(self.policy, baseline)
            self._gauge("budget", self.throttle.budget_ms)
            fields: dict[str, Any] = {"budget_ms": self.throttle.budget_ms,
                                      "baseline_p95_ms": baseline}  # fmt: skip
            if isinstance(baseline, Mapping):
                fields["budgets"] = self.throttle.budgets
            self._on_event("latency_budget", **fields)
        decision = self.throttle.last
        now = self._clock()
        if self.throttle.budget_ms is not None and now >= self._next:
            self._next = now + self.policy.check_every
            before = decision
            decision = self.throttle.decide(await self.read(conn))
            self._gauge("fleet_p95", decision.p95_ms)
            if decision.budget_ms is not None:
                self._gauge("budget", decision.budget_ms)
            if (decision.state, decision.reason is None) != (before.state, before.reason is None):
                self._on_event("latency", state=decision.state, reason=decision.reason)
                await self._on_change(conn, decision)
            elif decision.reason != before.reason:  # still held: the status shows today's figure
                await self._on_change(conn, decision)
        if decision.wait > 0:
            await hold("latency", decision.wait)

    def _gauge(self, kind: str, value: float | None) -> None:
        if self.metrics is not None:
            g = self.metrics.backfill_latency.labels(self.migration, kind)
            g.set(-1 if value is None else value / 1000.0)  # milliseconds to seconds


async def _nothing(conn: Any, decision: LatencyDecision) -> None:
    return None


async def _http_get(url: str) -> str:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            resp = await client.get(url)
            resp.raise_for_status()
            return resp.text
    except httpx.HTTPError:
        return ""  # no data: not a throttle


def throttle_recorder(
    migration: str, mode: str, shard: int
) -> Callable[[Any, LatencyDecision], Awaitable[None]]:
    """What puts a decision into the run's checkpoint row (``dualwrite status`` shows it):
    the state and reason while held (rewritten at each check whose reason reads differently,
    so a long pause shows the latest figure), NULL once running. State tables older than revision 4
    have no column for it: then it is only in the progress events and the gauges."""
    missing = False

    async def record(conn: Any, d: LatencyDecision) -> None:
        nonlocal missing
        if missing:
            return
        doc = None
        if d.reason is not None:
            doc = {"state": d.state, "reason": d.reason, "wait_seconds": d.wait,
                   "route": d.route, "p95_ms": d.p95_ms, "budget_ms": d.budget_ms}  # fmt: skip
        try:
            await checkpoints.set_throttle(conn, migration, mode, shard, doc)
        except asyncpg.UndefinedColumnError:
            missing = True

    return record


def latency_guard(
    migration: str, options: Any, metrics: Any, on_event: Callable[..., None]
) -> LatencyGuard:
    """The guard of a :class:`~dualwrite.backfill.options.BackfillOptions`."""
    policy = LatencyPolicy(
        factor=options.latency_factor,
        target_ms=options.latency_target_ms,
        check_every=options.latency_check_seconds,
    )
    record = throttle_recorder(migration, options.mode.value, options.shard)
    return LatencyGuard(
        migration, policy, prometheus_url=options.latency_prometheus_url, metrics=metrics,
        on_event=on_event, on_change=record,
    )  # fmt: skip
