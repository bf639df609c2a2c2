"""dualwrite's Prometheus metrics: the families (:mod:`~dualwrite.metrics.families`), correct
totals across worker processes (:mod:`~dualwrite.metrics.multiprocess`) and the gauges an API
instance refreshes from the database on its heartbeat cadence
(:mod:`~dualwrite.metrics.heartbeat`: fleet, lag, last gate verdict, last verification).

Who exports what: API instances serve ``GET /metrics`` (requests, crypto, reads, phase, fleet,
keys, gate, verification); backfill workers serve ``--metrics-port`` (progress, rate, throttle,
rows in the table, batches). The dashboards and alert rules in ``dashboards/`` use exactly
these names.
"""

from __future__ import annotations

from dualwrite.metrics.families import HTTP_BUCKETS, PHASES, Metrics

__all__ = ["HTTP_BUCKETS", "PHASES", "Metrics"]
