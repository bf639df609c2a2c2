"""The latency budget: the backfill slows down, then pauses, while live requests are slow.

The budget is an absolute target (``latency_target_ms``) or ``latency_factor`` (1.5) times the
fleet p95 read just before the backfill started. Before each batch (at most every
``check_every`` seconds) the backfiller reads the fleet's recent p95 -- the worst
``recent_p95_ms`` of the live API instances in their heartbeats
(:class:`~dualwrite.metrics.latency.RecentLatency`), or a Prometheus query returning
milliseconds -- and :class:`LatencyThrottle` decides (pure, no clock, no I/O):

* over budget: wait before the next batch, the wait doubling per check from ``min_delay``
  (slowed); once at ``max_delay`` and still over, hold every batch (paused);
* within budget: the wait halves per check until it is gone (resumed).

>>> t = LatencyThrottle(LatencyPolicy(min_delay=0.1, max_delay=0.4), baseline_ms=20.0)
>>> t.budget_ms
30.0
>>> [(d.state, d.wait) for d in map(t.decide, [25.0, 40.0, 40.0, 40.0, 40.0, 20.0, 20.0, 20.0])]
... # doctest: +NORMALIZE_WHITESPACE
[('running', 0.0), ('slowed', 0.1), ('slowed', 0.2), ('paused', 0.4), ('paused', 0.4),
 ('slowed', 0.2), ('slowed', 0.1), ('running', 0.0)]
>>> t.decide(45.0).reason
'fleet p95 45.0 ms > budget 30.0 ms'
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "FLEET_P95_SQL",
    "LatencyDecision",
    "LatencyGuard",
    "LatencyPolicy",
    "LatencyThrottle",
    "fleet_p95",
    "prometheus_p95",
]


@dataclass(frozen=True, slots=True)
class LatencyPolicy:
    """``target_ms`` > 0 is an absolute budget; otherwise ``factor`` x the baseline p95."""

    factor: float = 1.5
    target_ms: float = 0.0
    min_delay: float = 0.05
    max_delay: float = 2.0
    check_every: float = 1.0


@dataclass(frozen=True, slots=True)
class LatencyDecision:
    state: str  # running | slowed | paused
    wait: float  # seconds to hold before the next batch
    reason: str | None  # why, when held (never a value from a row)


class LatencyThrottle:
    """The decision of :mod:`the module <dualwrite.backfill.latency>` (pure)."""

    def __init__(self, policy: LatencyPolicy, baseline_ms: float | None) -> None:
        self.policy = policy
        self.baseline_ms = baseline_ms
        if policy.target_ms > 0:
            self.budget_ms: float | None = policy.target_ms
        elif baseline_ms is not None and baseline_ms > 0 and policy.factor > 0:
            self.budget_ms = round(baseline_ms * policy.factor, 3)
        else:
            self.budget_ms = None  # nothing to protect: no target and no fleet p95 reported
        self._delay = 0.0
        self.last = LatencyDecision("running", 0.0, None)

    def decide(self, p95_ms: float | None) -> LatencyDecision:
        """The decision for the fleet's current p95 (``None``: nobody reported one)."""
        p, budget = self.policy, self.budget_ms
        if budget is None or p95_ms is None:
            self._delay = 0.0
            self.last = LatencyDecision("running", 0.0, None)
            return self.last
        if p95_ms > budget:
            self._delay = min(p.max_delay, max(p.min_delay, self._delay * 2))
            state = "paused" if self._delay >= p.max_delay else "slowed"
            why = f"fleet p95 {p95_ms:.1f} ms > budget {budget:.1f} ms"
        else:
            half = self._delay / 2
            self._delay = half if half >= p.min_delay else 0.0
            state = "slowed" if self._delay else "running"
            why = f"fleet p95 {p95_ms:.1f} ms back within budget {budget:.1f} ms"
        self.last = LatencyDecision(state, round(self._delay, 6), why if self._delay else None)
        return self.last


FLEET_P95_SQL = """
SELECT max(recent_p95_ms) FROM dualwrite_instances
 WHERE migration = $1 AND role = 'api' AND recent_p95_ms IS NOT NULL
   AND last_seen > clock_timestamp() - make_interval(secs => $2)
"""
"""The worst recent p95 of the API instances that heartbeated in the last ``$2`` seconds."""


async def fleet_p95(conn: Any, migration: str, fresh_seconds: float = 10.0) -> float | None:
    """:data:`FLEET_P95_SQL` on an asyncpg connection."""
    value = await conn.fetchval(FLEET_P95_SQL, migration, float(fresh_seconds))
    return None if value is None else float(value)


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
        source: Callable[[Any], Awaitable[float | None]] | None = None,
    ) -> None:
        self.migration, self.policy, self.metrics = migration, policy, metrics
        self._url_source = prometheus_url and prometheus_p95(prometheus_url, _http_get)
        self._on_event = on_event
        self._clock = clock or time.monotonic
        self._next = 0.0
        self.throttle: LatencyThrottle | None = None
        self._source = source

    async def read(self, conn: Any) -> float | None:
        if self._source is not None:
            return await self._source(conn)
        if self._url_source:
            return await self._url_source()  # type: ignore[no-any-return]
        return await fleet_p95(conn, self.migration)

    async def before_batch(self, conn: Any, hold: Callable[[str, float], Awaitable[bool]]) -> None:
        """Hold (reason ``latency``) as long as the decision says; the first call reads the
        baseline that sets the budget."""
        if self.throttle is None:
            baseline = await self.read(conn)
            self.throttle = LatencyThrottle(self.policy, baseline)
            self._gauge("budget", self.throttle.budget_ms)
            self._on_event("latency_budget", budget_ms=self.throttle.budget_ms,
                           baseline_p95_ms=baseline)  # fmt: skip
        decision = self.throttle.last
        now = self._clock()
        if self.throttle.budget_ms is not None and now >= self._next:
            self._next = now + self.policy.check_every
            before, p95 = decision.state, await self.read(conn)
            decision = self.throttle.decide(p95)
            self._gauge("fleet_p95", p95)
            if decision.state != before:
                self._on_event("latency", state=decision.state, reason=decision.reason)
        if decision.wait > 0:
            await hold("latency", decision.wait)

    def _gauge(self, kind: str, value: float | None) -> None:
        if self.metrics is not None:
            g = self.metrics.backfill_latency.labels(self.migration, kind)
            g.set(-1 if value is None else value / 1000.0)  # milliseconds to seconds


async def _http_get(url: str) -> str:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            resp = await client.get(url)
            resp.raise_for_status()
            return resp.text
    except httpx.HTTPError:
        return ""  # no data: not a throttle


def latency_guard(
    migration: str, options: Any, metrics: Any, on_event: Callable[..., None]
) -> LatencyGuard:
    """The guard of a :class:`~dualwrite.backfill.options.BackfillOptions`."""
    policy = LatencyPolicy(
        factor=options.latency_factor,
        target_ms=options.latency_target_ms,
        check_every=options.latency_check_seconds,
    )
    return LatencyGuard(
        migration, policy, prometheus_url=options.latency_prometheus_url, metrics=metrics,
        on_event=on_event,
    )  # fmt: skip
