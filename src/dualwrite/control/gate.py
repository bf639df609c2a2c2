"""The latency gate: run Locust against a live service, judge per-endpoint p95, record it.

Deciding is pure (:func:`judge` over parsed stats); doing is :func:`run_locust` (a subprocess —
Locust gevent-patches the process it runs in). The verdict is recorded with
:func:`dualwrite.state.registry.record_gate`, and the ``backfill → read_switch`` / ``read_switch →
contract`` guards require a passing gate recorded in the current phase.

>>> rows = [EndpointStats("GET /items/{id}", 500, 0, 40.0),
...         EndpointStats("GET /items?limit=100", 100, 0, 1200.0)]
>>> verdict = judge(rows, {"GET /items/{id}": 100, "GET /items?limit=100": 1000})
>>> verdict.passed, verdict.failures
(False, ['GET /items?limit=100: p95 1200 ms > 1000 ms'])
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

ROUTES_LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtest" / "routes.py"
"""The generic load shipped with dualwrite: ``--route "METHOD PATH=MS"`` drives it."""

DESIGN_FLOORS_MS = {"single read": 100.0, "bulk read of 100": 1000.0}
"""DESIGN §9's floors, for reference: an app names its own endpoints and limits (see
``clients_service.gate`` for the reference service's)."""


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """``["GET /items/{id}=100", ...]`` -> ``{"GET /items/{id}": 100.0}`` (one-line errors).

    >>> parse_thresholds(["GET /a/{id}=50", "GET /a?limit=100=900"])
    {'GET /a/{id}': 50.0, 'GET /a?limit=100': 900.0}
    >>> parse_thresholds(["GET /a"])
    Traceback (most recent call last):
    ...
    dualwrite.errors.DualwriteError: threshold 'GET /a' must look like 'NAME=MILLISECONDS'
    """
    out: dict[str, float] = {}
    for item in items:
        name, sep, limit = item.rpartition("=")
        try:
            value = float(limit) if sep and name.strip() else -1.0
        except ValueError:
            value = -1.0
        if not (value > 0 and value < float("inf")):
            raise DualwriteError(f"threshold {item!r} must look like 'NAME=MILLISECONDS'")
        out[name.strip()] = value
    return out


def parse_routes(items: Sequence[str]) -> tuple[list[dict[str, str]], dict[str, float]]:
    """``["GET /patients/1=50"]`` -> the routes the generic load calls and their thresholds.

    >>> parse_routes(["GET /patients/1=50", "/patients?limit=100=400"])[1]
    {'GET /patients/1': 50.0, 'GET /patients?limit=100': 400.0}
    >>> parse_routes(["GET patients=5"])
    Traceback (most recent call last):
    ...
    dualwrite.errors.DualwriteError: route 'GET patients=5' must look like '[METHOD] /PATH=MS'
    """
    routes: list[dict[str, str]] = []
    limits = parse_thresholds(items)
    out: dict[str, float] = {}
    for item, (name, limit) in zip(items, limits.items(), strict=True):
        method, _, path = name.rpartition(" ")
        method = (method or "GET").strip().upper()
        if not path.startswith("/") or not method.isalpha():
            raise DualwriteError(f"route {item!r} must look like '[METHOD] /PATH=MS'")
        routes.append({"method": method, "path": path, "name": f"{method} {path}"})
        out[f"{method} {path}"] = limit
    return routes, out


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
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> list[EndpointStats]:
    """Run Locust headless as a subprocess and return per-endpoint stats.

    ``api_token`` reaches the locustfile as ``API_TOKEN``; ``env`` adds variables of its own."""
    if not locustfile.is_file():
        raise DualwriteError(f"locustfile not found: {locustfile}")
    with tempfile.TemporaryDirectory(prefix="dualwrite-gate-") as tmp:
        prefix = Path(tmp) / "gate"
        environ = {**os.environ, **(env or {})}
        if api_token:
            environ["API_TOKEN"] = api_token
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
            proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DualwriteError(f"locust did not finish within {timeout:.0f}s") from None
        stats_file = Path(f"{prefix}_stats.csv")
        if not stats_file.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DualwriteError(
                f"locust produced no statistics (exit {proc.returncode}): {last[:200]}"
            )
        return parse_stats_csv(stats_file)
