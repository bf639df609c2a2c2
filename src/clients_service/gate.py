"""The reference service's latency-gate endpoints and limits (DESIGN §9 floors by default).

Request names are route templates; :data:`LOCUSTFILE` reports exactly these.

>>> thresholds_ms()[SINGLE_READ], thresholds_ms(bulk_p95_ms=500)[BULK_READ]
(100.0, 500)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

LOCUSTFILE = Path(__file__).parent / "loadtest" / "locustfile.py"
"""The reference service's gate load (``dualwrite gate`` finds it next to the thresholds)."""

SINGLE_READ = "GET /workspaces/{ws}/clients/{id}"
BULK_READ = "GET /workspaces/{ws}/clients?limit=100"


def thresholds_ms(single_p95_ms: float = 100.0, bulk_p95_ms: float = 1000.0) -> dict[str, float]:
    """p95 limits per endpoint; defaults are the DESIGN §9 floors."""
    return {SINGLE_READ: single_p95_ms, BULK_READ: bulk_p95_ms}


DEFAULT_THRESHOLDS_MS: Mapping[str, float] = thresholds_ms()
