"""The latency gate: run Locust against a live service, judge per-endpoint p95, record it.

Deciding is pure (:func:`judge` over parsed stats); doing is :func:`run_locust` (a subprocess —
Locust gevent-patches the process it runs in). The verdict is recorded with
:func:`dualwrite.store.record_gate`, and the ``backfill → read_switch`` / ``read_switch →
contract`` guards require a passing gate recorded in the current phase.

>>> rows = [EndpointStats("GET /workspaces/{ws}/clients/{id}", 500, 0, 40.0),
...         EndpointStats("GET /workspaces/{ws}/clients?limit=100", 100, 0, 1200.0)]
>>> verdict = judge(rows, DEFAULT_THRESHOLDS_MS)
>>> verdict.passed, verdict.failures
(False, ['GET /workspaces/{ws}/clients?limit=100: p95 1200 ms > 1000 ms'])
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualwrite.errors import DualwriteError

SINGLE_READ = "GET /workspaces/{ws}/clients/{id}"
BULK_READ = "GET /workspaces/{ws}/clients?limit=100"
"""Request names (route templates) the locustfile reports and the thresholds refer to."""


def thresholds_ms(single_p95_ms: float = 100.0, bulk_p95_ms: float = 1000.0) -> dict[str, float]:
    """p95 limits per endpoint; defaults are the DESIGN §9 floors."""
    return {SINGLE_READ: single_p95_ms, BULK_READ: bulk_p95_ms}


DEFAULT_THRESHOLDS_MS: Mapping[str, float] = thresholds_ms()
"""DESIGN §9 floors: single read p95 < 100 ms, bulk read of 100 p95 < 1000 ms."""


@dataclass(frozen=True, slots=True)
class EndpointStats:
    name: str
    requests: int
    failures: int
    p95_ms: float


@dataclass(frozen=True, slots=True)
class GateVerdict:
    passed: bool
    endpoints: tuple[EndpointStats, ...]
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "endpoints": {
                e.name: {"requests": e.requests, "failures": e.failures, "p95_ms": e.p95_ms}
                for e in self.endpoints
            },
        }


def judge(stats: Sequence[EndpointStats], thresholds: Mapping[str, float]) -> GateVerdict:
    """Fail on any threshold miss, any failed request, or a thresholded endpoint never called."""
    failures: list[str] = []
    by_name = {s.name: s for s in stats}
    for s in stats:
        if s.failures:
            failures.append(f"{s.name}: {s.failures} of {s.requests} requests failed")
    for name, limit in thresholds.items():
        measured = by_name.get(name)
        if measured is None or measured.requests == 0:
            failures.append(f"{name}: no requests measured")
        elif measured.p95_ms > limit:
            failures.append(f"{name}: p95 {measured.p95_ms:.0f} ms > {limit:.0f} ms")
    return GateVerdict(not failures, tuple(stats), failures)


def parse_stats_csv(path: Path) -> list[EndpointStats]:
    """Rows of Locust's ``<prefix>_stats.csv`` (the ``Aggregated`` row is left out)."""
    out = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") == "Aggregated" or not row.get("Name"):
                continue
            p95 = row.get("95%", "0")
            out.append(
                EndpointStats(
                    name=f"{row['Type']} {row['Name']}"
                    if not row["Name"].startswith(row["Type"])
                    else row["Name"],
                    requests=int(row["Request Count"]),
                    failures=int(row["Failure Count"]),
                    p95_ms=float(p95) if p95 not in ("", "N/A") else 0.0,
                )
            )
    return out


def run_locust(
    host: str,
    *,
    locustfile: Path = Path("loadtests/locustfile.py"),
    users: int = 8,
    spawn_rate: float = 8,
    duration: str = "20s",
    api_token: str | None = None,
    clients_per_user: int = 100,
    workspace: str | None = None,
    timeout: float = 600,
) -> list[EndpointStats]:
    """Run Locust headless as a subprocess and return per-endpoint stats.

    ``workspace`` names an existing workspace with 100+ clients to read (else each simulated user
    first creates ``clients_per_user`` clients of its own)."""
    if not locustfile.is_file():
        raise DualwriteError(f"locustfile not found: {locustfile}")
    with tempfile.TemporaryDirectory(prefix="dualwrite-gate-") as tmp:
        prefix = Path(tmp) / "gate"
        env = dict(os.environ)
        env["DUALWRITE_GATE_CLIENTS"] = str(clients_per_user)
        if workspace:
            env["DUALWRITE_GATE_WORKSPACE"] = workspace
        if api_token:
            env["API_TOKEN"] = api_token
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(spawn_rate),
            "-t",
            duration,
            "--host",
            host,
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "ERROR",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DualwriteError(f"locust did not finish within {timeout:.0f}s") from None
        stats_file = Path(f"{prefix}_stats.csv")
        if not stats_file.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DualwriteError(
                f"locust produced no statistics (exit {proc.returncode}): {last[:200]}"
            )
        return parse_stats_csv(stats_file)
